"""Archive extraction that checks every member before writing anything.

Refused: absolute paths, drive letters, ``..`` components, links whose target leaves the extraction
directory (and every link in a zip), devices, FIFOs and other special files. Only after the whole
member list passes is anything extracted; tar extraction additionally runs under Python's ``data``
filter where available.
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from .errors import UnsafeArchiveError


def _check_relative(archive: str, member: str, name: str) -> PurePosixPath:
    """``name`` as a relative path that stays inside the extraction directory."""
    if not name or "\x00" in name:
        raise UnsafeArchiveError(f"{archive}: member {member!r} has an empty or invalid name")
    normalized = name.replace("\\", "/")
    path = PurePosixPath(normalized)
    if path.is_absolute() or normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {member!r} has an absolute path")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"{archive}: member {member!r} contains '..'")
    return path


def _inside(base: PurePosixPath, target: str) -> bool:
    """Whether ``target`` (relative to directory ``base``) stays inside the extraction root."""
    depth = 0
    for part in (base / target).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part not in (".", ""):
            depth += 1
    return True


def check_tar(archive: str, tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        path = _check_relative(archive, m.name, m.name)
        if m.issym() or m.islnk():
            target = m.linkname
            if not target or target.startswith("/") or PurePosixPath(target).is_absolute():
                raise UnsafeArchiveError(f"{archive}: link {m.name!r} points to the absolute path {target!r}")
            base = path.parent if m.issym() else PurePosixPath()
            if not _inside(base, target):
                raise UnsafeArchiveError(f"{archive}: link {m.name!r} -> {target!r} leads outside the archive")
        elif not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device, FIFO or other special file")
    return members


def check_zip(archive: str, zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    members = zf.infolist()
    for info in members:
        _check_relative(archive, info.filename, info.filename)
        mode = info.external_attr >> 16
        if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a link or special file")
    return members


def safe_extract(archive_path: Path, dest: Path, fmt: str, label: str | None = None) -> None:
    """Extract ``archive_path`` (``fmt`` ``"tar"`` or ``"zip"``) into the existing directory ``dest``.

    ``label`` names the archive in errors (e.g. its URI). Raises :class:`UnsafeArchiveError` before
    writing anything if any member is unsafe.
    """
    label = label or str(archive_path)
    if fmt == "zip":
        try:
            with zipfile.ZipFile(archive_path) as zf:
                members = check_zip(label, zf)
                for info in members:
                    zf.extract(info, dest)
        except zipfile.BadZipFile as e:
            raise UnsafeArchiveError(f"{label}: not a valid zip archive: {e}") from e
        return
    if fmt != "tar":
        raise ValueError(f"unknown archive format {fmt!r}")
    try:
        with tarfile.open(archive_path, "r:*") as tar:
            members = check_tar(label, tar)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # Python without extraction filters: members were checked above
                tar.extractall(dest, members=members)  # noqa: S202
    except tarfile.TarError as e:
        raise UnsafeArchiveError(f"{label}: not a valid tar archive: {e}") from e
