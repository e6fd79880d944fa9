"""``python -m modelzoo import NAME PATH``: a copy obtained elsewhere, installed exactly like a download."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

import modelzoo
from modelzoo.cli import main

from .conftest import checkpoint_files, make_tgz, sha256, tree, write_index

NAME = "alibaba-pai/pai-artist-knowl-base-zh"


@pytest.fixture
def offline_model(zoo, tmp_path, monkeypatch):
    """Registers NAME at an address that cannot be reached; returns a function to change its entry."""

    def register(**entry) -> None:
        entry.setdefault("uri", f"http://models.invalid/release/{NAME}.tgz")
        monkeypatch.setenv("EASYNLP_MODELZOO_INDEX", str(write_index(tmp_path / "idx.json", {NAME: entry})))

    register()
    return register


def _import(name: str, source: Path) -> Path:
    from modelzoo.hub import Cache, default_cache_dir, import_copy

    return import_copy(modelzoo.get_entry(name), source, Cache(default_cache_dir()))


def _check_installed(path: Path, zoo: Path) -> dict:
    assert path == zoo / "models" / NAME.replace("/", "--")
    for name, data in checkpoint_files().items():
        assert (path / name).read_bytes() == data
    assert list((zoo / "tmp").iterdir()) == [], "no staging left behind"
    return json.loads((path / ".modelzoo.json").read_text(encoding="utf-8"))


def test_import_archive_verified_then_resolves_offline(offline_model, zoo, tmp_path, monkeypatch, capsys):
    archive = make_tgz(tmp_path / "obtained" / "copy.tgz", checkpoint_files())
    offline_model(sha256=sha256(archive), size=archive.stat().st_size)
    assert main(["import", NAME, str(archive)]) == 0
    path = Path(capsys.readouterr().out.strip())
    meta = _check_installed(path, zoo)
    assert meta["verified"] is True
    assert meta["imported_from"] == {"path": str(archive.resolve()), "sha256": sha256(archive)}
    monkeypatch.setenv("EASYNLP_MODELZOO_OFFLINE", "1")
    assert modelzoo.resolve(NAME) == path
    assert main(["verify", NAME]) == 0


def test_import_folder_unverified_then_resolves_offline(offline_model, zoo, tmp_path, monkeypatch):
    folder = tmp_path / "from-a-colleague"
    folder.mkdir()
    for name, data in checkpoint_files().items():
        (folder / name).write_bytes(data)
    os.symlink("config.json", folder / "alias.json")  # a link inside the folder is kept
    with pytest.warns(modelzoo.UnverifiedDownloadWarning, match="UNVERIFIED"):
        path = _import(NAME, folder)
    meta = _check_installed(path, zoo)
    assert meta["verified"] is False and meta["imported_from"]["path"] == str(folder.resolve())
    assert (path / "alias.json").is_symlink() and (path / "alias.json").read_bytes() == checkpoint_files()["config.json"]
    assert sorted(meta["files_sha256"]) == sorted(checkpoint_files())
    assert modelzoo.resolve(NAME, offline=True) == path
    (folder / "config.json").unlink()
    assert (path / "config.json").is_file(), "the cache holds a copy"


def test_import_zip_of_a_files_entry_checks_each_file(zoo, tmp_path, monkeypatch):
    files = checkpoint_files()
    monkeypatch.setenv("EASYNLP_MODELZOO_INDEX", str(write_index(tmp_path / "i.json", {"flat": {"files": [
        {"path": n, "uri": f"https://models.invalid/{n}", "sha256": sha256(d), "size": len(d)}
        for n, d in files.items()]}})))
    archive = tmp_path / "flat.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for n, d in files.items():
            zf.writestr(f"flat/{n}", d)
    assert main(["import", "flat", str(archive)]) == 0
    assert modelzoo.resolve("flat", offline=True).joinpath("vocab.txt").read_bytes() == files["vocab.txt"]
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        for n, d in files.items():
            zf.writestr(n, d if n != "vocab.txt" else d[:-1] + b"X")
    with pytest.raises(modelzoo.ChecksumError, match=r"vocab.txt: sha256 differs from the index"):
        _import("flat", bad)


def test_wrong_checksum_refused_in_one_line(offline_model, zoo, tmp_path, capsys):
    archive = make_tgz(tmp_path / "copy.tgz", checkpoint_files())
    offline_model(sha256="0" * 64)
    before = tree(zoo / "models")
    assert main(["import", NAME, str(archive)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "sha256 mismatch" in err[0] and str(archive) in err[0] and NAME in err[0]
    assert tree(zoo / "models") == before and list((zoo / "tmp").iterdir()) == []
    offline_model(sha256=sha256(archive))
    folder = tmp_path / "unpacked"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert main(["import", NAME, str(folder)]) == 1
    assert "import that archive file, not a folder" in capsys.readouterr().err


def test_unsafe_archive_or_folder_refused(offline_model, zoo, tmp_path, capsys):
    archive = tmp_path / "evil.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("ckpt/config.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
        info = tarfile.TarInfo("ckpt/../../evil.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    assert main(["import", NAME, str(archive)]) == 1
    assert "contains '..'" in capsys.readouterr().err
    folder = tmp_path / "linked"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    os.symlink("/etc/passwd", folder / "vocab.txt")
    assert main(["import", NAME, str(folder)]) == 1
    assert "'vocab.txt' is a link leading outside the folder" in capsys.readouterr().err
    assert tree(zoo / "models") == {} and not (tmp_path / "evil.txt").exists()


def test_import_bad_arguments(offline_model, zoo, tmp_path, capsys):
    assert main(["import", "artist-bse-zh", str(tmp_path)]) == 2
    assert "did you mean 'artist-base-zh'" in capsys.readouterr().err
    assert main(["import", NAME, str(tmp_path / "nope.tgz")]) == 1
    assert "nope.tgz: no such file or directory" in capsys.readouterr().err
    (tmp_path / "weights.bin").write_bytes(b"1")
    assert main(["import", NAME, str(tmp_path / "weights.bin")]) == 1
    assert "not a folder nor a .tgz/.tar.gz/.tar/.zip archive" in capsys.readouterr().err
    assert main(["import", "artist-shapes-tiny-zh", str(tmp_path)]) == 1
    assert "nothing to import" in capsys.readouterr().err


def test_failed_download_ends_with_the_import_command(offline_model, zoo):
    with pytest.raises(modelzoo.ModelZooError) as err:
        modelzoo.resolve(NAME)
    message = str(err.value)
    assert "cannot resolve host 'models.invalid'" in message
    assert message.endswith(f"to install a copy obtained elsewhere: python -m modelzoo import {NAME} PATH")
