from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from appzoo.app import BaseApp
from appzoo.apps import AppNotFoundError, discover_apps, find_app, format_app_list
from appzoo.cli import main

TOY_PLUGIN_DIR = Path(__file__).parent / "toy_plugin"


def test_discovery_finds_toy_apps_and_reports_broken_plugin(toy_plugin):
    entries = {e.name: e for e in discover_apps()}
    assert entries["toy_regression"].app_cls is toy_plugin.ToyRegressionApp
    assert entries["toy_regression"].distribution == "appzoo-toy-plugin"
    broken = entries["toy_broken"]
    assert broken.app_cls is None and "ModuleNotFoundError" in broken.error
    listing = format_app_list(list(entries.values()))
    assert "toy_regression" in listing and "aliases: toy_alias" in listing
    assert "toy_broken" in listing and "BROKEN (appzoo_toy_missing_module:App)" in listing


def test_find_by_name_alias_and_errors(toy_plugin):
    assert find_app("toy_regression") is toy_plugin.ToyRegressionApp
    assert find_app("toy_alias") is toy_plugin.ToyRegressionApp
    with pytest.raises(AppNotFoundError, match=r"unknown app 'toy_regresion'; did you mean toy_regression\?"):
        find_app("toy_regresion")
    with pytest.raises(AppNotFoundError, match="installed but broken: ModuleNotFoundError"):
        find_app("toy_broken")


def test_supported_modes(toy_plugin):
    assert toy_plugin.EchoApp.supported_modes() == ("predict",)
    assert toy_plugin.ToyRegressionApp.supported_modes() == ("train", "evaluate", "predict")
    assert BaseApp.supported_modes() == ()


def test_help_lists_apps_without_importing_them(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(TOY_PLUGIN_DIR))
    monkeypatch.delitem(sys.modules, "appzoo_toy_app", raising=False)
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--user_defined_parameters" in out
    assert re.search(r"toy_regression +appzoo_toy_app:ToyRegressionApp \(from appzoo-toy-plugin\)", out)
    assert re.search(r"toy_broken +appzoo_toy_missing_module:App \(from appzoo-toy-plugin\)", out)
    assert "easynlp --app_name=NAME --help describes one app" in out
    assert "appzoo_toy_app" not in sys.modules  # listed from the metadata, not imported


def test_help_of_the_selected_app_imports_it(toy_plugin, capsys):
    assert main(["--app_name=toy_regression", "--help"]) == 0
    assert "Toy regression app for the appzoo tests" in capsys.readouterr().out
    assert main(["--app_name=toy_broken", "--help"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("easynlp: error: app 'toy_broken' (appzoo_toy_missing_module:App) is installed but broken")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--app_name=toy_echo", "--mode=predict", "--tabels=x"], r"unknown flag --tabels; did you mean --tables\?"),
        (["--mode=predict"], "--app_name is required"),
        (["--app_name=toy_echo", "--mode=train"], "does not support --mode=train .supported: predict."),
        (["--app_name=toy_echo", "--mode=predict", "--user_defined_parameters=prefx=a"],
         r"unknown key 'prefx'; did you mean prefix\?"),
        (["--app_name=toy_echo", "--user_defined_parameters=upper=Flase"], "upper=Flase: expected a boolean"),
        (["--app_name=nope"], "unknown app 'nope'"),
        (["--app_name=toy_broken"], "is installed but broken"),
    ],
)
def test_bad_input_exits_2_with_one_line(toy_plugin, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("easynlp: error: ") and err.count("\n") == 1
    assert re.search(message, err)


def _echo(tmp_path, rows: bytes, *extra: str) -> tuple[int, str]:
    table = tmp_path / "in.tsv"
    table.write_bytes(rows)
    return main([
        "--app_name=toy_echo", "--mode=predict", f"--tables={table}", f"--outputs={tmp_path / 'out.tsv'}",
        "--input_schema=idx:str:1,text:str:1", "--first_sequence=text", "--micro_batch_size=2", *extra,
    ])


def test_echo_predict_and_bool_false_is_false(toy_plugin, tmp_path):
    assert _echo(tmp_path, b"1\tab\n2\tcd\n3\tef\n", "--user_defined_parameters=upper=False prefix=>") == 0
    assert (tmp_path / "out.tsv").read_text() == ">ab\n>cd\n>ef\n"
    assert _echo(tmp_path, b"1\tab\n", "--user_defined_parameters=upper=TRUE") == 0
    assert (tmp_path / "out.tsv").read_text() == "AB\n"


def test_bad_row_reports_file_and_line_and_publishes_nothing(toy_plugin, tmp_path, capsys):
    status = _echo(tmp_path, b"1\tab\n2\tcd\n3\tef\tgh\n4\tij\n")
    err = capsys.readouterr().err
    assert status == 2
    assert f"easynlp: error: {tmp_path / 'in.tsv'}, line 3, column 3: expected 2 tab-separated columns" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tsv"]


def test_console_script_and_module_entry(toy_env, tmp_path):
    bin_dir = Path(sys.executable).parent
    result = subprocess.run([str(bin_dir / "easynlp"), "--help"], env=toy_env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "toy_regression" in result.stdout and "Traceback" not in result.stdout + result.stderr
    result = subprocess.run([sys.executable, "-m", "appzoo", "--app_name=toy_echo", "--mod=predict"],
                            env=toy_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == "easynlp: error: unknown flag --mod; did you mean --mode?\n"


def test_train_then_evaluate_through_cli(toy_plugin, tmp_path, write_toy_table, caplog):
    table = write_toy_table(tmp_path / "t.tsv", 6)
    common = [f"--tables={table}", "--input_schema=idx:str:1,x:float:4,y:float:1",
              f"--checkpoint_dir={tmp_path / 'ckpt'}", "--micro_batch_size=4", "--app_name=toy_alias"]
    assert main(["--mode=train", "--epoch_num=1", *common]) == 0
    caplog.set_level("INFO", logger="appzoo")
    assert main(["--mode=evaluate", *common]) == 0
    assert '"num_samples": 6' in caplog.text
