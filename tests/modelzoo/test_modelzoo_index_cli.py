"""The registry (shipped and user indexes, validation errors) and the CLI."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import modelzoo
from modelzoo.cli import main
from modelzoo.index import SHIPPED_INDEX, parse_index

from .conftest import checkpoint_files, make_tgz, sha256, write_index

ORIGINAL_NAMES = ["alibaba-pai/pai-painter-base-zh", "alibaba-pai/pai-painter-large-zh",
                  "alibaba-pai/pai-painter-commercial-base-zh", "alibaba-pai/pai-artist-knowl-base-zh",
                  "artist-base-zh"]
BUCKET = "https://atp-modelzoo-sh.oss-cn-shanghai.aliyuncs.com/release/easynlp_modelzoo/"


def test_shipped_index_has_released_names_and_embedded_model(zoo):
    entries = {e.name: e for e in modelzoo.list_models()}
    for name in ORIGINAL_NAMES:
        e = entries[name]
        assert e.uri == f"{BUCKET}{name}.tgz" and e.kind == "archive"
        assert e.sha256 is None and not e.verified
    tiny = entries["artist-shapes-tiny-zh"]
    assert tiny.uri == "package://easynlp_artist/resources/artist-shapes-tiny-zh" and tiny.kind == "local"


def test_embedded_model_resolves_to_package_data_or_fails_clearly(zoo):
    spec = importlib.util.find_spec("easynlp_artist")
    expected = Path(next(iter(spec.submodule_search_locations))) / "resources" / "artist-shapes-tiny-zh"
    if expected.is_dir():
        assert modelzoo.resolve("artist-shapes-tiny-zh") == expected
    else:
        with pytest.raises(modelzoo.ModelZooError, match="artist-shapes-tiny-zh.*files are missing"):
            modelzoo.resolve("artist-shapes-tiny-zh")
    assert not zoo.exists(), "the embedded model is used in place, never copied into the cache"


def test_package_entry_present_and_missing(zoo, tmp_path, monkeypatch):
    pkg = tmp_path / "zoo_pkg_data"
    (pkg / "resources" / "m").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "resources" / "m" / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path))
    index = write_index(tmp_path / "i.json", {
        "pkg-model": {"uri": "package://zoo_pkg_data/resources/m",
                      "files": [{"path": "config.json", "sha256": sha256(b"{}")}]},
        "pkg-gone": {"uri": "package://zoo_pkg_data/resources/gone"}})
    monkeypatch.setenv("EASYNLP_MODELZOO_INDEX", str(index))
    assert modelzoo.resolve("pkg-model") == pkg / "resources" / "m"
    with pytest.raises(modelzoo.ModelZooError, match="'pkg-gone'.*package://zoo_pkg_data/resources/gone"):
        modelzoo.resolve("pkg-gone")
    assert main(["verify", "pkg-model"]) == 0
    (pkg / "resources" / "m" / "config.json").write_text("{ }")
    assert main(["verify", "pkg-model"]) == 1


def test_user_index_overrides_and_relative_paths(zoo, tmp_path, monkeypatch):
    ckpt = tmp_path / "models" / "local-ckpt"
    ckpt.mkdir(parents=True)
    index = write_index(tmp_path / "idx.json", {"artist-base-zh": {"uri": "models/local-ckpt",
                                                                   "description": "mine"}})
    second = write_index(tmp_path / "second.json", {"extra-model": {"uri": str(ckpt)}})
    monkeypatch.setenv("EASYNLP_MODELZOO_INDEX", f"{index}; {second}")
    assert modelzoo.get_entry("artist-base-zh").description == "mine"
    assert modelzoo.resolve("artist-base-zh") == ckpt == modelzoo.resolve("extra-model")
    assert "alibaba-pai/pai-painter-base-zh" in {e.name for e in modelzoo.list_models()}


def test_remote_index_cached_for_offline(zoo, served, monkeypatch):
    archive = make_tgz(served.root / "r.tgz", checkpoint_files())
    write_index(served.root / "index.json", {"remote/model": {"uri": served.url("r.tgz"),
                                                              "sha256": sha256(archive)}})
    monkeypatch.setenv("EASYNLP_MODELZOO_INDEX", served.url("index.json"))
    import modelzoo.index as index_module

    monkeypatch.setattr(index_module, "_parsed_remote", {})
    path = modelzoo.resolve("remote/model")
    served.stop()
    monkeypatch.setattr(index_module, "_parsed_remote", {})  # a new process: offline uses the saved copy
    assert modelzoo.resolve("remote/model", offline=True) == path


BAD_INDEXES = [
    ('{"models": {"a": {"uri": "x", }}}', r"invalid JSON", "1:31"),  # the "}" after the trailing comma
    ('{\n "models": {\n  "ok": {"uri": "/x"},\n  "bad": {"uri": "/x", "sha256": "abc"}}}',
     r"models\['bad'\]: sha256 must be 64", "4:3"),
    ('{"models": {"a": {"url": "/x"}}}', r"unknown field\(s\) \['url'\]", "1:13"),
    ('{"models": {"a/b/c": {"uri": "/x"}}}', "a name is", "1:13"),
    ('{"models": {"a": {"uri": "/x", "size": -1}}}', "size must be a non-negative integer", "1:13"),
    ('{"models": {"a": {"files": [{"path": "../x", "uri": "/y"}]}}}', r"must be relative without '\.\.'",
     "1:13"),
    ('{"models": {"a": {"description": "no uri"}}}', "needs a 'uri'", "1:13"),
    ('{"version": 9, "models": {}}', "unsupported index version", "1:2"),
]


@pytest.mark.parametrize("text,message,where", BAD_INDEXES)
def test_index_errors_name_file_line_column(text: str, message: str, where: str):
    with pytest.raises(modelzoo.ModelZooError, match=message) as err:
        parse_index(text, "user.json", Path("/"))
    assert str(err.value).startswith(f"user.json:{where}:")


def test_shipped_index_is_valid_json_schema():
    doc = json.loads(SHIPPED_INDEX.read_text(encoding="utf-8"))
    assert set(parse_index(SHIPPED_INDEX.read_text(encoding="utf-8"), "shipped")) == set(doc["models"])


def test_cli_list_info_download_verify(zoo, served, tmp_path, monkeypatch, capsys):
    archive = make_tgz(served.root / "c.tgz", checkpoint_files())
    index = write_index(tmp_path / "i.json", {"org/cli-model": {"uri": served.url("c.tgz"),
                                                                "sha256": sha256(archive),
                                                                "size": archive.stat().st_size,
                                                                "description": "for the CLI"}})
    monkeypatch.setenv("EASYNLP_MODELZOO_INDEX", str(index))
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("org/cli-model"))
    assert line.split()[3:5] == ["yes", "no"] and "for the CLI" in line
    assert main(["verify", "org/cli-model"]) == 1
    assert "not downloaded" in capsys.readouterr().out
    assert main(["download", "org/cli-model"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert (path / "config.json").is_file()
    assert main(["info", "org/cli-model"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cached"] is True and info["sha256"] == sha256(archive) and info["cache_path"] == str(path)
    assert main(["verify", "org/cli-model"]) == 0
    (path / "vocab.txt").write_text("tampered")
    assert main(["verify", "org/cli-model"]) == 1
    assert "vocab.txt: sha256 changed since installation" in capsys.readouterr().out
    assert main(["download", "--force", "org/cli-model"]) == 0
    capsys.readouterr()
    assert main(["verify", "org/cli-model"]) == 0
    assert len(served.gets("c.tgz")) == 2
    assert main(["download", "no-such-model"]) == 2
    assert "not a local directory nor a model name" in capsys.readouterr().err


def test_python_dash_m_entry_point(zoo):
    proc = subprocess.run([sys.executable, "-m", "modelzoo", "info", "artist-base-zh"], capture_output=True,
                          text=True, timeout=60, cwd=Path(modelzoo.__file__).parents[1])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["uri"] == f"{BUCKET}artist-base-zh.tgz"
