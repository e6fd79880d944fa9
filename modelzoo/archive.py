"""Archive extraction that checks every member before writing anything.

Refused: absolute paths, drive letters, ``..`` components, links whose target leaves the extraction
directory (and every link in a zip), members whose path or link target passes through a link member
(symlink chains), members written over a link, devices, FIFOs and other special files. Only after the
whole member list passes is anything extracted. These checks alone keep extraction inside the folder;
tar extraction additionally runs under Python's ``data`` filter where available, as a second line
(that filter is missing or incomplete on Python 3.10.0-3.10.11 and 3.11.0-3.11.3).
"""

from __future__ import annotations

import os
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


def _through_link(archive: str, member: str, parts: tuple[str, ...], links: set[tuple[str, ...]],
                  what: str) -> None:
    """Refuse ``parts`` (a member path, or where a link target leads) if it passes through a link.

    On disk a link member is followed, so a path through it ends wherever the link points, which a
    check of the names alone cannot see (``a -> ..`` then ``a/b -> ..`` then ``a/b/file``). ``..`` is
    applied as written, and the prefix reached before it is checked too (``up/..`` passes through
    ``up``). Where ``parts`` ends is not checked: a link to a link (``a -> b``, ``b -> file``) ends
    inside when each link is checked.
    """
    stack: list[str] = []
    last = max((i for i, part in enumerate(parts) if part not in (".", "")), default=-1)
    for i, part in enumerate(parts):
        if part in (".", ""):
            continue
        if part == "..":
            if stack:
                stack.pop()
            continue
        stack.append(part)
        prefix = tuple(stack)
        if i < last and prefix in links:
            raise UnsafeArchiveError(f"{archive}: member {member!r}: {what} passes through the link "
                                     f"{'/'.join(prefix)!r} (links inside an archive may not be followed)")


def check_tar(archive: str, tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Every member of ``tar``, after checking them all (raises :class:`UnsafeArchiveError`).

    Beyond each member's own name and link target, no member may pass through, or be written over, a
    link member of the archive (in any order), and no link target may lead through one: this keeps
    chains of individually harmless links from reaching outside, independently of the interpreter's
    extraction filter.
    """
    members = tar.getmembers()
    paths: list[PurePosixPath] = []
    for m in members:
        path = _check_relative(archive, m.name, m.name)
        paths.append(path)
        if m.issym() or m.islnk():
            target = m.linkname
            if not target or target.startswith("/") or PurePosixPath(target).is_absolute():
                raise UnsafeArchiveError(f"{archive}: link {m.name!r} points to the absolute path {target!r}")
            base = path.parent if m.issym() else PurePosixPath()
            if not _inside(base, target):
                raise UnsafeArchiveError(f"{archive}: link {m.name!r} -> {target!r} leads outside the archive")
        elif not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device, FIFO or other special file")
    links = {path.parts for m, path in zip(members, paths) if m.issym() or m.islnk()}
    if not links:
        return members
    seen_links: set[tuple[str, ...]] = set()
    for m, path in zip(members, paths):
        is_link = m.issym() or m.islnk()
        _through_link(archive, m.name, path.parts, links, "its path")
        if path.parts in links and (not is_link or path.parts in seen_links):
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} would be written through the link "
                                     f"{path.as_posix()!r} of the same name")
        if is_link:
            seen_links.add(path.parts)
            base = path.parent.parts if m.issym() else ()
            target = tuple(m.linkname.replace("\\", "/").split("/"))
            _through_link(archive, m.name, base + target, links, f"its link target {m.linkname!r}")
    return members


def check_zip(archive: str, zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    members = zf.infolist()
    for info in members:
        _check_relative(archive, info.filename, info.filename)
        mode = info.external_attr >> 16
        if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a link or special file")
    return members


def check_folder(folder: Path, label: str) -> None:
    """The rules for archive members, applied to a folder about to be copied (links are not followed):
    no link may lead outside ``folder``, no device, FIFO or socket. Raises :class:`UnsafeArchiveError`."""
    root = os.path.realpath(folder)
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, folder)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                real = os.path.realpath(path)
                if os.path.commonpath([root, real]) != root:
                    raise UnsafeArchiveError(f"{label}: {rel!r} is a link leading outside the folder "
                                             f"(-> {os.readlink(path)!r})")
            elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UnsafeArchiveError(f"{label}: {rel!r} is a device, FIFO, socket or other special file")


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
