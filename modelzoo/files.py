"""The ground floor every layer stands on: atomic files and folders, booleans, environment numbers.

Each of these is written once here and used by ``modelzoo``, ``appzoo`` and ``easynlp_artist``
(which may import this package; it imports none of them). URIs — which locations are remote,
what a local path is, and how a URI is shown in a message without its secrets — are in
:mod:`modelzoo.storage` (``is_remote``, ``local_path``, ``redact``).

Atomic publishing: a file or folder is written under a temporary name beside its target and
renamed over it only when complete, so a reader sees the old one or the new one, never half.
Temporary names carry the writer's process id, so a later writer removes those left behind by a
process that was killed (:func:`remove_stale`).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})

_UMASK = os.umask(0)
os.umask(_UMASK)
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.(?:tmp|staging)$")


# ------------------------------------------------------------------------------------------ words


def parse_bool(text: str) -> bool:
    """``true/1/yes/on`` → True, ``false/0/no/off`` → False (any case); anything else is an error."""
    lowered = str(text).strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ValueError(f"expected a boolean (true/false, 1/0, yes/no, on/off), got {text!r}")


def env_bool(name: str, default: bool = False) -> bool:
    """The boolean in environment variable ``name`` (unset or empty: ``default``)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return parse_bool(value)
    except ValueError as exc:
        raise ValueError(f"{name}={value!r}: {exc}") from None


def env_number(name: str, default: float, kind: type = float, minimum: float | None = None) -> float:
    """The ``kind`` (int or float) in environment variable ``name``, at least ``minimum``."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        parsed = kind(value)
    except ValueError:
        label = "an integer" if kind is int else "a number"
        raise ValueError(f"{name}={value!r} is not {label}") from None
    if minimum is not None and parsed < minimum:
        raise ValueError(f"{name}={value!r} must be at least {minimum}")
    return parsed


# ------------------------------------------------------------------------------------------ files


def temp_sibling(path: str | os.PathLike, kind: str = "tmp") -> Path:
    """A fresh temporary name beside ``path``: ``.NAME.PID-XXXXXXXX.tmp`` (or ``.staging``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.{kind}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Remove temporary siblings of ``path`` left by writers that no longer run; returns them."""
    path = Path(path)
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in path.parent.iterdir():
            m = _TEMP_RE.match(entry.name)
            if m is None or m["name"] != path.name or _alive(int(m["pid"])):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's bytes to disk (every file below it, for a folder)."""
    path = Path(path)
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish_file(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give a finished temporary file the usual mode, flush it and rename it over ``path``."""
    # mkstemp-style 0600 files, and writers that recreate the file (safetensors), get the mode
    # open() would give
    os.chmod(tmp, 0o666 & ~_UMASK)
    fsync_path(tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path``, on an
    error it is removed and ``path`` is untouched."""
    target = Path(os.path.abspath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    tmp = temp_sibling(target)
    try:
        yield str(tmp)
        publish_file(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; on success it replaces the folder ``path``
    (an older one is moved aside, then deleted), on an error it is deleted and ``path`` is
    untouched. An interrupted swap is repaired by :func:`recover_dir`."""
    target = Path(os.path.abspath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    staging = temp_sibling(target, "staging")
    staging.mkdir()
    try:
        yield staging
        fsync_path(staging)
        publish_dir(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _old(target: Path) -> Path:
    return target.with_name(f".old-{target.name}")


def publish_dir(staging: Path, target: Path) -> None:
    """Rename a finished folder over ``target``: old aside, new in, old deleted."""
    old = _old(target)
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(target: str | os.PathLike) -> None:
    """Finish or undo a :func:`publish_dir` that was killed between its renames, and remove
    staging folders of writers that no longer run."""
    target = Path(target)
    old = _old(target)
    if old.exists():
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, target)
    remove_stale(target)
