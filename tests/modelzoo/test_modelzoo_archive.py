"""Archive safety: every member is checked before anything is extracted."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

import modelzoo
from modelzoo.archive import safe_extract

from .conftest import sha256, tree, write_index


def _tar(path: Path, members: list[tarfile.TarInfo], data: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            if info.isfile():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


UNSAFE_TARS = {
    "dotdot": ([_file("ok/config.json"), _file("ok/../../evil.txt")], "contains '..'"),
    "absolute": ([_file("ok/config.json"), _file("/tmp/evil.txt")], "absolute path"),
    "symlink-out": ([_link("ok/link", "../../outside")], "leads outside"),
    "symlink-abs": ([_link("ok/link", "/etc/passwd")], "absolute path"),
    "hardlink-out": ([_link("ok/hard", "../x", tarfile.LNKTYPE)], "leads outside"),
    "device": ([_file("ok/config.json"), _device("ok/null")], "device"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE_TARS))
def test_unsafe_tar_refused_before_extracting_anything(tmp_path: Path, case: str):
    members, reason = UNSAFE_TARS[case]
    archive = _tar(tmp_path / f"{case}.tgz", members)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(modelzoo.UnsafeArchiveError, match=reason):
        safe_extract(archive, dest, "tar")
    assert list(dest.iterdir()) == [], "nothing may be written when any member is unsafe"
    assert not (tmp_path / "evil.txt").exists()


def test_safe_tar_with_internal_symlink_extracts(tmp_path: Path):
    archive = _tar(tmp_path / "ok.tgz", [_file("m/config.json"), _link("m/alias.json", "config.json")], b"{}")
    dest = tmp_path / "dest"
    dest.mkdir()
    safe_extract(archive, dest, "tar")
    assert (dest / "m" / "alias.json").read_bytes() == b"{}"
    assert (dest / "m" / "alias.json").is_symlink()


def test_link_to_a_link_inside_extracts(tmp_path: Path, no_tar_data_filter):
    archive = _tar(tmp_path / "ok.tgz", [_file("m/config.json"), _link("m/b.json", "config.json"),
                                         _link("m/a.json", "b.json"), _link("m/c.json", "m/a.json", tarfile.LNKTYPE)],
                   b"{}")
    dest = tmp_path / "dest"
    dest.mkdir()
    safe_extract(archive, dest, "tar")
    assert [(dest / "m" / n).read_bytes() for n in ("a.json", "b.json", "c.json")] == [b"{}"] * 3


def test_zip_members_checked(tmp_path: Path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("ok.txt", b"1")
        zf.writestr("../evil.txt", b"2")
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(modelzoo.UnsafeArchiveError, match=r"\.\."):
        safe_extract(bad, dest, "zip")
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("m/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "../../etc/passwd")
    with pytest.raises(modelzoo.UnsafeArchiveError, match="link"):
        safe_extract(link, dest, "zip")
    assert list(dest.iterdir()) == []
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("m/config.json", b"{}")
    safe_extract(good, dest, "zip")
    assert (dest / "m" / "config.json").read_bytes() == b"{}"


def test_resolve_refuses_traversal_archive_and_installs_nothing(zoo, served, tmp_path, monkeypatch):
    archive = _tar(served.root / "evil.tgz", [_file("ckpt/config.json"), _file("../evil.txt")])
    index = write_index(tmp_path / "idx.json", {"evil": {"uri": served.url("evil.tgz"),
                                                         "sha256": sha256(archive)}})
    monkeypatch.setenv("EASYNLP_MODELZOO_INDEX", str(index))
    with pytest.raises(modelzoo.UnsafeArchiveError) as err:
        modelzoo.resolve("evil")
    assert "'../evil.txt'" in str(err.value) and served.url("evil.tgz") in str(err.value)
    assert tree(zoo / "models") == {} and tree(zoo / "tmp") == {}, "nothing installed, nothing left over"
    assert not (zoo / "evil.txt").exists()


# Symlink chains: each link alone stays inside, but a later member passes through one, so on disk it
# lands outside. Only CPython's tar "data" filter (absent or incomplete on 3.10.0-3.10.11 and
# 3.11.0-3.11.3) would catch these; the member check must refuse them by itself.
LINK_CHAINS = {
    "file-through-link-chain": [_link("ok/up", ".."), _link("ok/up/esc", ".."), _file("ok/up/esc/evil.txt")],
    "link-target-through-link": [_link("ok/up", ".."), _link("ok/esc", "up/.."), _file("ok/esc/evil.txt")],
    "hardlink-through-symlinks": [_link("ok/up", ".."), _link("ok/up/esc", ".."),
                                  _link("ok/stolen", "ok/up/esc/evil.txt", tarfile.LNKTYPE)],
}


@pytest.fixture
def no_tar_data_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Extraction as on an interpreter without a working data filter: "data" trusts every member."""
    monkeypatch.setitem(tarfile._NAMED_FILTERS, "data", tarfile.fully_trusted_filter)


@pytest.mark.parametrize("case", sorted(LINK_CHAINS))
def test_symlink_chain_refused_without_the_interpreter_filter(tmp_path: Path, case: str, no_tar_data_filter):
    archive = _tar(tmp_path / "chain.tgz", LINK_CHAINS[case])
    hardlink = case.startswith("hardlink")
    # Without any check, the archive really reaches outside its folder:
    sandbox = tmp_path / "sandbox" / "dest"
    sandbox.mkdir(parents=True)
    if hardlink:  # a file outside that the hard link adopts (later writes to it would change it)
        (sandbox.parent / "evil.txt").write_text("outside")
    with tarfile.open(archive) as tar:
        tar.extractall(sandbox, filter="fully_trusted")
    if hardlink:
        assert (sandbox / "ok" / "stolen").samefile(sandbox.parent / "evil.txt")
    else:
        assert (sandbox.parent / "evil.txt").read_bytes() == b"x", "the test archive must be a real escape"
    # The member check refuses it before anything is written:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(modelzoo.UnsafeArchiveError, match="through the link 'ok/up'") as err:
        safe_extract(archive, dest, "tar")
    assert str(archive) in str(err.value) and "\n" not in str(err.value)
    assert list(dest.iterdir()) == [] and not (tmp_path / "evil.txt").exists()


def test_member_replacing_a_link_refused(tmp_path: Path, no_tar_data_filter):
    archive = _tar(tmp_path / "dup.tgz", [_file("ok/real.json"), _link("ok/a.json", "real.json"), _file("ok/a.json")])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(modelzoo.UnsafeArchiveError, match="'ok/a.json' would be written through the link"):
        safe_extract(archive, dest, "tar")
    assert list(dest.iterdir()) == []
