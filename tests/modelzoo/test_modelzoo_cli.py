"""``python -m modelzoo``: one-line errors, exit status 2 for bad input, --debug; the embedded model's manifest."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import modelzoo
from modelzoo.cli import main
from modelzoo.index import SHIPPED_INDEX

from .conftest import checkpoint_files, make_tgz, sha256, write_index

ROOT = Path(modelzoo.__file__).parents[1]
EMBEDDED = "artist-shapes-tiny-zh"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "modelzoo", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=dict(os.environ, **(env or {})))


def _one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("modelzoo: error: "), stderr
    return lines[0]


def test_mistyped_name_exits_2_with_one_line_and_a_suggestion(zoo):
    proc = _run("download", "artist-bse-zh")
    assert proc.returncode == 2 and proc.stdout == ""
    line = _one_error_line(proc.stderr)
    assert "'artist-bse-zh'" in line and "did you mean 'artist-base-zh'" in line


@pytest.mark.parametrize("argv,expected", [
    (["info", "no-such-model-anywhere"], "'no-such-model-anywhere' is not"),
    (["verify", "./not/a/dir"], "./not/a/dir: no such directory"),
    (["download", "ftp://host/m.tgz"], "unsupported scheme 'ftp'"),
    (["lsit"], "unknown command 'lsit'; did you mean 'list'?"),
    (["download"], "required: name"),
    (["list", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_input_exits_2_with_one_line(zoo, capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_:
        raise SystemExit(main(argv))
    assert exit_.value.code == 2
    assert expected in _one_error_line(capsys.readouterr().err)


def test_offline_message_says_who_asked(zoo, served, tmp_path, monkeypatch, capsys):
    archive = make_tgz(served.root / "c.tgz", checkpoint_files())
    monkeypatch.setenv("EASYNLP_MODELZOO_INDEX", str(write_index(tmp_path / "i.json", {
        "org/m": {"uri": served.url("c.tgz"), "sha256": sha256(archive)}})))
    assert main(["--offline", "download", "org/m"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "you passed --offline" in line and "EASYNLP_MODELZOO_OFFLINE" not in line
    assert "python -m modelzoo import org/m PATH" in line
    monkeypatch.setenv("EASYNLP_MODELZOO_OFFLINE", "1")
    assert main(["download", "org/m"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "EASYNLP_MODELZOO_OFFLINE=1" in line and "unset EASYNLP_MODELZOO_OFFLINE" in line
    with pytest.raises(modelzoo.ModelZooError, match=r"offline=True was passed") as err:
        modelzoo.resolve("org/m", offline=True)
    assert "EASYNLP_MODELZOO_OFFLINE" not in str(err.value)
    assert served.gets("c.tgz") == []


def test_traceback_only_with_debug(zoo, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    for extra, env in (([], {}), (["--debug"], {}), ([], {"EASYNLP_DEBUG": "1"})):
        proc = _run("--cache-dir", str(blocked / "cache"), *extra, "download", str(make_tgz(
            tmp_path / "m.tgz", checkpoint_files())), env=env)
        assert proc.returncode == 1
        if extra or env:
            assert "Traceback" in proc.stderr and proc.stderr.splitlines()[-1].startswith("modelzoo: error: ")
        else:
            assert str(blocked) in _one_error_line(proc.stderr)


def test_unreachable_name_is_one_line_ending_with_the_import_command(zoo, tmp_path, monkeypatch):
    from helpers.range_server import closed_port

    name = "alibaba-pai/pai-artist-knowl-base-zh"
    uri = f"http://127.0.0.1:{closed_port()}/release/{name}.tgz?token=SECRET1"
    monkeypatch.setenv("EASYNLP_MODELZOO_INDEX", str(write_index(tmp_path / "i.json", {name: {"uri": uri}})))
    with pytest.raises(modelzoo.ModelZooError) as err:
        modelzoo.resolve(name)
    message = str(err.value)
    assert "\n" not in message and name in message and uri.split("?")[0] in message and "SECRET1" not in message
    assert message.endswith(f"python -m modelzoo import {name} PATH")
    assert message.count("127.0.0.1") == 1, "the URI is named once"


# --------------------------------------------------------------------------- the embedded model's manifest


def _embedded_dir() -> Path:
    return modelzoo.resolve(EMBEDDED)


def test_shipped_manifest_matches_the_shipped_files(zoo):
    """Fails when the embedded model changes without `python -m modelzoo manifest artist-shapes-tiny-zh`."""
    from modelzoo.manifest import folder_files

    entry = modelzoo.get_entry(EMBEDDED)
    assert entry.files and all(f.sha256 and f.size for f in entry.files)
    assert list(entry.files) == folder_files(_embedded_dir())


def test_list_shows_the_embedded_size_and_verify_checks_every_file(zoo, capsys):
    assert main(["list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(EMBEDDED))
    total = sum(p.stat().st_size for p in _embedded_dir().iterdir())
    assert row.split()[1:3] == [f"{total / 2**20:.1f}", "MiB"]
    assert main(["verify", EMBEDDED]) == 0
    n = len(list(_embedded_dir().iterdir()))
    assert f"{n} file(s) checked" in capsys.readouterr().out and n >= 5


def test_verify_of_a_changed_copy_names_the_file(zoo, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(_embedded_dir(), copy)
    shipped = json.loads(SHIPPED_INDEX.read_text(encoding="utf-8"))["models"][EMBEDDED]
    monkeypatch.setenv("EASYNLP_MODELZOO_INDEX", str(write_index(tmp_path / "i.json", {
        EMBEDDED: dict(shipped, uri=str(copy))})))
    assert main(["verify", EMBEDDED]) == 0
    capsys.readouterr()
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    assert main(["verify", EMBEDDED]) == 1
    out = capsys.readouterr().out
    assert "model.safetensors: sha256 differs from the index" in out and "config.json" not in out
    (copy / "vocab.txt").write_text("short")
    assert main(["verify", EMBEDDED]) == 1
    assert "vocab.txt: 5 bytes, the index says" in capsys.readouterr().out


def test_manifest_command_regenerates_the_list(zoo, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    index = write_index(tmp_path / "i.json", {"mine": {"uri": "m", "description": "kept"},
                                              "other": {"uri": "https://h/x.tgz"}})
    monkeypatch.setenv("EASYNLP_MODELZOO_INDEX", str(index))
    assert main(["verify", "mine"]) == 0
    assert "lists no files" in capsys.readouterr().out
    assert main(["manifest", "mine", "--index", str(index)]) == 0
    (folder / "config.json").write_text('{"retrained": 1}')
    assert main(["verify", "mine"]) == 1
    assert main(["manifest", "mine", "--index", str(index)]) == 0
    capsys.readouterr()
    assert main(["verify", "mine"]) == 0
    assert "1 file(s) checked" in capsys.readouterr().out
    doc = json.loads(index.read_text(encoding="utf-8"))
    assert doc["models"]["mine"]["files"] == [{"path": "config.json", "sha256": sha256(b'{"retrained": 1}'),
                                               "size": 16}]
    assert doc["models"]["mine"]["description"] == "kept" and doc["models"]["other"] == {"uri": "https://h/x.tgz"}
    assert main(["manifest", "other", "--index", str(index)]) == 1
    assert "a manifest is for local directories" in _one_error_line(capsys.readouterr().err)
