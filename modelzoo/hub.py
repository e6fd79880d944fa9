"""Resolving names, URIs and paths to a local checkpoint directory, and the cache behind it.

Cache layout (``$EASYNLP_MODELZOO_CACHE`` or ``~/.cache/easynlp_artist/modelzoo``)::

    models/<org>--<name>/        an installed checkpoint, with .modelzoo.json (where it came from,
                                 computed sha256s, whether the index vouched for them)
    tmp/<key>.<uri-hash>.part    partial downloads (resumed by the next resolve), staging directories
    .locks/<key>.lock            one lock per name: concurrent resolvers download once
    indexes/                     remote indexes named by EASYNLP_MODELZOO_INDEX, for offline use

An installed directory appears by an atomic rename of a fully verified staging directory, so a reader
that sees ``models/<key>/.modelzoo.json`` sees a complete checkpoint; resolving a cached name reads
that one small file and takes no lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from .download import RetryPolicy, fetch, sha256_file
from .errors import ChecksumError, ModelZooError
from .files import env_bool, env_number, publish_dir, recover_dir, write_text_atomic
from .index import NAME_RE, ModelEntry, Registry, archive_format, cache_key, load_registry
from .storage import is_remote, local_path, redact, scheme_of

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "~/.cache/easynlp_artist/modelzoo"
META_NAME = ".modelzoo.json"
DEFAULT_LOCK_TIMEOUT_S = 3600.0


class UnverifiedDownloadWarning(UserWarning):
    """A checkpoint was installed without a sha256 in the index to check it against."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("EASYNLP_MODELZOO_CACHE") or DEFAULT_CACHE_DIR).expanduser()


def is_offline(offline: bool | None = None) -> bool:
    if offline is not None:
        return offline
    try:
        return env_bool("EASYNLP_MODELZOO_OFFLINE")
    except ValueError as e:
        raise ModelZooError(str(e)) from None


def _lock_timeout() -> float:
    try:
        return env_number("EASYNLP_MODELZOO_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT_S, minimum=0)
    except ValueError as e:
        raise ModelZooError(f"{e} (seconds)") from None


def adhoc_entry(uri: str) -> ModelEntry:
    """An unregistered URI (or local archive) resolved like an unverified index entry."""
    return ModelEntry(name=uri, uri=uri, source="(direct URI)")


def entry_cache_key(entry: ModelEntry) -> str:
    if NAME_RE.match(entry.name):
        return cache_key(entry.name)
    digest = hashlib.sha256(entry.name.encode()).hexdigest()[:16]
    stem = PurePosixPath(urlsplit(entry.name).path).name.split(".")[0][:40] or "object"
    return f"uri-{digest}-{stem}"


@dataclass
class Cache:
    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    def install_dir(self, entry: ModelEntry) -> Path:
        return self.models / entry_cache_key(entry)

    def partial(self, entry: ModelEntry, uri: str) -> Path:
        digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
        return self.root / "tmp" / f"{entry_cache_key(entry)}.{digest}.part"

    def lock_path(self, entry: ModelEntry) -> Path:
        return self.root / ".locks" / f"{entry_cache_key(entry)}.lock"


def read_meta(install_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((install_dir / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_current(install_dir: Path, entry: ModelEntry) -> bool:
    meta = read_meta(install_dir)
    return meta is not None and meta.get("fingerprint") == entry.fingerprint()


def lookup(target: str, registry: Registry) -> ModelEntry:
    """The index entry for ``target``, an ad-hoc entry for a URI/archive, else a clear error."""
    entry = registry.get(target)
    if entry is not None:
        return entry
    scheme = scheme_of(target)
    if is_remote(target) or (scheme in ("", "file") and archive_format(target) is not None):
        path = None if is_remote(target) else local_path(target)
        if path is not None and not path.is_file():
            raise ModelZooError(f"{target}: no such file or directory")
        return adhoc_entry(target)
    if scheme:
        local_path(target)  # raises for an unsupported scheme
        raise ModelZooError(f"{redact(target)}: no such directory")
    looks_like_path = target.startswith(("/", ".", "~")) or (os.sep in target and not NAME_RE.match(target))
    if looks_like_path:
        raise ModelZooError(f"{target}: no such directory, and not a registered model name")
    close = get_close_matches(target, list(registry.entries), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ModelZooError(f"{target!r} is not a local directory nor a model name in the index "
                        f"({', '.join(registry.sources)}){hint}. See `python -m modelzoo list`.")


def resolve(name_or_uri_or_path: str, *, cache_dir: str | os.PathLike | None = None,
            offline: bool | None = None) -> Path:
    """A local directory holding the checkpoint named by a registry name, a URI or a local path.

    A local directory resolves to itself. Registry names and URIs are downloaded into the cache
    (verified, extracted safely, installed atomically) unless already there. ``offline`` (default:
    ``EASYNLP_MODELZOO_OFFLINE``) uses the cache only. Raises :class:`ModelZooError`.
    """
    target = os.fspath(name_or_uri_or_path)
    scheme = scheme_of(target)
    if scheme in ("", "file", "package"):
        path = local_path(target)
        if path is not None and path.is_dir():
            return path
    cache = Cache(Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir())
    off = is_offline(offline)
    entry = lookup(target, load_registry(cache.root, off))
    return install(entry, cache, offline=off)


def local_entry_dir(entry: ModelEntry) -> Path:
    assert entry.uri is not None
    try:
        path = local_path(entry.uri)
    except ModelZooError as e:
        raise ModelZooError(f"model {entry.display}: {e}") from e
    assert path is not None
    if not path.is_dir():
        raise ModelZooError(f"model {entry.display}: its files are missing: {entry.uri} → {path} is not a "
                            "directory (for the embedded model, build or reinstall the package data)")
    return path


def install(entry: ModelEntry, cache: Cache, *, offline: bool = False, force: bool = False) -> Path:
    """Ensure ``entry`` is installed in ``cache`` and return its directory (see :func:`resolve`)."""
    if entry.kind == "local":
        return local_entry_dir(entry)
    dest = cache.install_dir(entry)
    if not force and _is_current(dest, entry):
        return dest
    sources = [entry.uri] if entry.uri else [f.uri for f in entry.files]
    if offline and any(is_remote(uri) for uri in sources if uri):
        if force:
            raise ModelZooError(f"model {entry.display}: cannot download again in offline mode "
                                "(EASYNLP_MODELZOO_OFFLINE=1)")
        if read_meta(dest) is not None:
            warnings.warn(f"offline mode: using the cached copy of {entry.display} at {dest}, which was "
                          "installed from a different index entry (URI or sha256 changed)", stacklevel=3)
            return dest
        raise ModelZooError(_offline_message(entry, cache, dest))
    from filelock import FileLock, Timeout

    lock_path = cache.lock_path(entry)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    timeout = _lock_timeout()
    try:
        with FileLock(str(lock_path), timeout=timeout):
            if not force and _is_current(dest, entry):
                return dest  # another process installed it while we waited
            _download_and_install(entry, cache, dest)
    except Timeout as e:
        raise ModelZooError(f"model {entry.display}: another process has held {lock_path} for {timeout:.0f} s "
                            "(EASYNLP_MODELZOO_LOCK_TIMEOUT); remove it if no download is running") from e
    return dest


def _offline_message(entry: ModelEntry, cache: Cache, dest: Path) -> str:
    sources = [entry.uri] if entry.uri else [f.uri for f in entry.files if f.uri]
    missing = []
    for uri in sources:
        assert uri is not None
        part = cache.partial(entry, uri)
        have = f" (partial: {part.stat().st_size} bytes at {part})" if part.exists() else ""
        missing.append(f"{redact(uri)}{have}")
    return (f"offline mode (EASYNLP_MODELZOO_OFFLINE=1): model {entry.display} is not in the cache "
            f"{cache.root}; missing {dest} from {'; '.join(missing)}. Download it with network access "
            f"(`python -m modelzoo download {redact(entry.name)}`) or unset EASYNLP_MODELZOO_OFFLINE.")


def _tree_hashes(root: Path, known: dict[str, str] | None = None) -> dict[str, str]:
    """sha256 of every regular file under ``root`` by POSIX relative path (links are not followed).

    ``known`` digests (computed while downloading) are reused instead of reading the file again.
    """
    known = known or {}
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != META_NAME:
            rel = path.relative_to(root).as_posix()
            out[rel] = known[rel] if rel in known else sha256_file(path).hexdigest()
    return out


def _content_root(content: Path) -> Path:
    """An archive holding one top-level directory (``name/config.json``) installs that directory."""
    children = list(content.iterdir())
    if len(children) == 1 and children[0].is_dir() and not children[0].is_symlink():
        return children[0]
    return content


def _warn_unverified(entry: ModelEntry, uri: str, sha256: str) -> None:
    message = (f"model {entry.display}: {redact(uri)} has no sha256 in the index "
               f"({entry.source}); installed UNVERIFIED. Computed sha256 {sha256} is recorded in "
               f"{META_NAME}; add it to the index to verify future downloads.")
    log.warning(message)
    warnings.warn(message, UnverifiedDownloadWarning, stacklevel=4)


def _download_and_install(entry: ModelEntry, cache: Cache, dest: Path) -> None:
    from .archive import safe_extract  # tarfile/zipfile only when installing, not on cache hits

    policy = RetryPolicy.from_env()
    staging_parent = cache.root / "tmp"
    staging_parent.mkdir(parents=True, exist_ok=True)
    for stale in staging_parent.glob(f"{entry_cache_key(entry)}.staging.*"):  # left by a killed process
        shutil.rmtree(stale, ignore_errors=True)  # safe: we hold this name's lock
    staging = Path(tempfile.mkdtemp(prefix=f"{entry_cache_key(entry)}.staging.", dir=staging_parent))
    downloads: dict[str, str] = {}
    known: dict[str, str] = {}  # digests of installed files computed while downloading them
    parts_to_remove: list[Path] = []
    try:
        content = staging / "content"
        content.mkdir()
        if entry.kind in ("archive", "file"):
            assert entry.uri is not None
            source = local_path(entry.uri) if not is_remote(entry.uri) else None
            label = f"model {entry.display} from {redact(entry.uri)}"
            if source is not None:  # a local archive: verify in place, no copy
                if not source.is_file():
                    raise ModelZooError(f"{label}: no such file {source}")
                digest = sha256_file(source).hexdigest()
                if entry.sha256 is not None and digest != entry.sha256:
                    raise ChecksumError(f"{label}: sha256 mismatch: expected {entry.sha256}, got {digest}")
                archive = source
            else:
                part = cache.partial(entry, entry.uri)
                result = fetch(entry.uri, part, expected_size=entry.size, expected_sha256=entry.sha256,
                               policy=policy, label=label)
                digest, archive = result.sha256, part
                parts_to_remove.append(part)
            downloads[redact(entry.uri)] = digest
            if entry.sha256 is None:
                _warn_unverified(entry, entry.uri, digest)
            fmt = archive_format(entry.uri)
            if fmt is not None:
                safe_extract(archive, content, fmt, label=label)
            else:  # one remote file (kind "file"): the partial download becomes the checkpoint file
                file_name = PurePosixPath(urlsplit(entry.uri).path).name or "model.bin"
                os.replace(archive, content / file_name)
                known[file_name] = digest
        else:
            for f in entry.files:
                assert f.uri is not None
                label = f"model {entry.display} file {f.path} from {redact(f.uri)}"
                part = cache.partial(entry, f.uri)
                result = fetch(f.uri, part, expected_size=f.size, expected_sha256=f.sha256, policy=policy,
                               label=label)
                downloads[redact(f.uri)] = result.sha256
                if f.sha256 is None:
                    _warn_unverified(entry, f.uri, result.sha256)
                target = content / f.path
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(part, target)
                known[PurePosixPath(f.path).as_posix()] = result.sha256
        root = _content_root(content) if entry.kind == "archive" else content
        if root != content:
            prefix = root.relative_to(content).as_posix() + "/"
            known = {k[len(prefix):]: v for k, v in known.items() if k.startswith(prefix)}
        meta = {
            "name": redact(entry.name),
            "fingerprint": entry.fingerprint(),
            "verified": entry.verified,
            "downloads_sha256": downloads,
            "files_sha256": _tree_hashes(root, known),
            "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "index": entry.source,
        }
        write_text_atomic(root / META_NAME, json.dumps(meta, indent=1, ensure_ascii=False))
        dest.parent.mkdir(parents=True, exist_ok=True)
        recover_dir(dest)
        publish_dir(root, dest)
    finally:
        for part in parts_to_remove:  # verified archives: installed, or refused (e.g. unsafe members)
            part.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)


@dataclass
class VerifyReport:
    name: str
    path: Path | None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(entry: ModelEntry, cache: Cache) -> VerifyReport:
    """Re-hash an installed checkpoint against what was recorded at install time and the index."""
    if entry.kind == "local":
        try:
            path = local_entry_dir(entry)
        except ModelZooError as e:
            return VerifyReport(redact(entry.name), None, [str(e)])
        report = VerifyReport(redact(entry.name), path)
        for f in entry.files:
            file = path / f.path
            if not file.is_file():
                report.problems.append(f"{f.path}: missing")
            elif f.sha256 is not None:
                report.checked += 1
                if sha256_file(file).hexdigest() != f.sha256:
                    report.problems.append(f"{f.path}: sha256 differs from the index")
        return report
    dest = cache.install_dir(entry)
    meta = read_meta(dest)
    report = VerifyReport(redact(entry.name), dest)
    if meta is None:
        report.problems.append(f"not downloaded (no {dest / META_NAME})")
        return report
    if meta.get("fingerprint") != entry.fingerprint():
        report.problems.append("installed from a different index entry (URI or sha256 changed); "
                               "run `python -m modelzoo download --force NAME`")
    if not meta.get("verified"):
        report.notes.append("downloaded without an index sha256 (unverified); file hashes are compared "
                            "with those computed at installation")
    recorded: dict[str, str] = meta.get("files_sha256", {})
    actual = _tree_hashes(dest)
    report.checked = len(actual)
    for rel in sorted(set(recorded) | set(actual)):
        if rel not in actual:
            report.problems.append(f"{rel}: missing")
        elif rel not in recorded:
            report.problems.append(f"{rel}: not part of the installed checkpoint")
        elif actual[rel] != recorded[rel]:
            report.problems.append(f"{rel}: sha256 changed since installation")
    for f in entry.files:
        if f.sha256 is not None and actual.get(f.path) not in (None, f.sha256):
            report.problems.append(f"{f.path}: sha256 differs from the index")
    return report
