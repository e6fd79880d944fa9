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

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from .download import RetryPolicy, fetch, sha256_file
from .errors import ChecksumError, ModelZooError, StorageError, UnknownModelError
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


# Who turned offline mode on, as shown in messages, and how to turn it off.
OFFLINE_BY = {
    "env": ("EASYNLP_MODELZOO_OFFLINE=1", "unset EASYNLP_MODELZOO_OFFLINE"),
    "flag": ("you passed --offline", "run without --offline"),
    "argument": ("offline=True was passed", "pass offline=False"),
}


def offline_by(offline: bool | None, explicit: str = "argument") -> str:
    """The :data:`OFFLINE_BY` key for an ``offline`` setting: ``explicit`` when given, else ``env``."""
    return "env" if offline is None else explicit


def import_hint(entry: ModelEntry) -> str:
    """How to install a copy of ``entry`` obtained elsewhere (ends download error messages)."""
    return f"; to install a copy obtained elsewhere: python -m modelzoo import {redact(entry.name)} PATH"


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
            raise UnknownModelError(f"{target}: no such file or directory")
        return adhoc_entry(target)
    if scheme:
        try:
            local_path(target)  # raises for an unsupported scheme
        except StorageError as e:
            raise UnknownModelError(str(e)) from None
        raise UnknownModelError(f"{redact(target)}: no such directory")
    looks_like_path = target.startswith(("/", ".", "~")) or (os.sep in target and not NAME_RE.match(target))
    if looks_like_path:
        raise UnknownModelError(f"{target}: no such directory, and not a registered model name")
    close = get_close_matches(target, list(registry.entries), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownModelError(f"{target!r} is not a local directory nor a model name in the index "
                            f"({', '.join(registry.sources)}){hint or '.'} See `python -m modelzoo list`.")


def resolve(name_or_uri_or_path: str, *, cache_dir: str | os.PathLike | None = None,
            offline: bool | None = None) -> Path:
    """A local directory holding the checkpoint named by a registry name, a URI or a local path.

    A local directory resolves to itself. Registry names and URIs are downloaded into the cache
    (verified, extracted safely, installed atomically) unless already there. ``offline`` (default:
    ``EASYNLP_MODELZOO_OFFLINE``) uses the cache only. Raises :class:`ModelZooError`.
    """
    cache = Cache(Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir())
    return resolve_in(os.fspath(name_or_uri_or_path), cache, is_offline(offline), offline_by(offline))


def resolve_in(target: str, cache: Cache, offline: bool, by: str = "env") -> Path:
    """:func:`resolve` with the cache and offline mode decided; ``by`` (a key of :data:`OFFLINE_BY`)
    says who asked for offline mode, for the messages."""
    if scheme_of(target) in ("", "file", "package"):
        try:
            path = local_path(target)
        except StorageError as e:
            raise UnknownModelError(str(e)) from None
        if path is not None and path.is_dir():
            return path
    entry = lookup(target, load_registry(cache.root, offline, OFFLINE_BY[by][0]))
    return install(entry, cache, offline=offline, offline_by=by)


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


def install(entry: ModelEntry, cache: Cache, *, offline: bool = False, force: bool = False,
            offline_by: str = "env") -> Path:
    """Ensure ``entry`` is installed in ``cache`` and return its directory (see :func:`resolve`)."""
    if entry.kind == "local":
        return local_entry_dir(entry)
    dest = cache.install_dir(entry)
    if not force and _is_current(dest, entry):
        return dest
    sources = [entry.uri] if entry.uri else [f.uri for f in entry.files]
    if offline and any(is_remote(uri) for uri in sources if uri):
        why, undo = OFFLINE_BY[offline_by]
        if force:
            raise ModelZooError(f"model {entry.display}: cannot download again in offline mode ({why}); {undo}")
        if read_meta(dest) is not None:
            warnings.warn(f"offline mode: using the cached copy of {entry.display} at {dest}, which was "
                          "installed from a different index entry (URI or sha256 changed)", stacklevel=3)
            return dest
        raise ModelZooError(_offline_message(entry, cache, dest, offline_by))

    def download() -> None:
        if force or not _is_current(dest, entry):  # else another process installed it while we waited
            _download_and_install(entry, cache, dest)

    _locked(entry, cache, download)
    return dest


def _locked(entry: ModelEntry, cache: Cache, action: Callable[[], object]) -> None:
    """Run ``action`` holding ``entry``'s lock in ``cache`` (one installer per name at a time)."""
    from filelock import FileLock, Timeout

    lock_path = cache.lock_path(entry)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    timeout = _lock_timeout()
    try:
        with FileLock(str(lock_path), timeout=timeout):
            action()
    except Timeout:
        raise ModelZooError(f"model {entry.display}: another process has held {lock_path} for {timeout:.0f} s "
                            "(EASYNLP_MODELZOO_LOCK_TIMEOUT); remove it if no download is running") from None


def _offline_message(entry: ModelEntry, cache: Cache, dest: Path, by: str = "env") -> str:
    sources = [entry.uri] if entry.uri else [f.uri for f in entry.files if f.uri]
    missing = []
    for uri in sources:
        assert uri is not None
        part = cache.partial(entry, uri)
        have = f" (partial: {part.stat().st_size} bytes at {part})" if part.exists() else ""
        missing.append(f"{redact(uri)}{have}")
    why, undo = OFFLINE_BY[by]
    name = redact(entry.name)
    return (f"offline mode ({why}): model {entry.display} is not in the cache {cache.root}; missing {dest} "
            f"from {'; '.join(missing)}. Download it with network access (`python -m modelzoo download "
            f"{name}`; {undo}), or install a copy obtained elsewhere: python -m modelzoo import {name} PATH")


def _tree_hashes(root: Path, known: dict[str, str] | None = None) -> dict[str, str]:
    """sha256 of every regular file under ``root`` by POSIX relative path (links are not followed).

    ``known`` digests (computed while downloading) are reused instead of reading the file again.
    """
    known = known or {}
    return {rel: known[rel] if rel in known else sha256_file(path).hexdigest() for rel, path in tree_files(root)}


def tree_files(root: Path) -> Iterator[tuple[str, Path]]:
    """``(POSIX relative path, path)`` of every regular file under ``root``, sorted; links are not
    followed and the install metadata is left out."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != META_NAME:
            yield path.relative_to(root).as_posix(), path


def _content_root(content: Path) -> Path:
    """An archive holding one top-level directory (``name/config.json``) installs that directory."""
    children = list(content.iterdir())
    if len(children) == 1 and children[0].is_dir() and not children[0].is_symlink():
        return children[0]
    return content


def _warn_unverified(entry: ModelEntry, what: str, sha256: str | None) -> None:
    computed = (f"Computed sha256 {sha256} is recorded in {META_NAME}; add it to the index to verify future "
                "downloads.") if sha256 else f"File hashes are recorded in {META_NAME}."
    message = (f"model {entry.display}: {what} has no sha256 in the index ({entry.source}); installed "
               f"UNVERIFIED. {computed}")
    log.warning(message)
    warnings.warn(message, UnverifiedDownloadWarning, stacklevel=4)


@contextlib.contextmanager
def _staging(entry: ModelEntry, cache: Cache) -> Iterator[Path]:
    """An empty ``content`` folder in a fresh staging directory of the cache, removed afterwards.

    Call with ``entry``'s lock held: stale staging directories of the name (left by a killed process)
    are removed first.
    """
    staging_parent = cache.root / "tmp"
    staging_parent.mkdir(parents=True, exist_ok=True)
    for stale in staging_parent.glob(f"{entry_cache_key(entry)}.staging.*"):
        shutil.rmtree(stale, ignore_errors=True)  # safe: we hold this name's lock
    staging = Path(tempfile.mkdtemp(prefix=f"{entry_cache_key(entry)}.staging.", dir=staging_parent))
    try:
        content = staging / "content"
        content.mkdir()
        yield content
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(entry: ModelEntry, root: Path, dest: Path, *, verified: bool, known: dict[str, str],
             **record: Any) -> None:
    """Write the install metadata into the finished ``root`` and rename it into place as ``dest``.

    ``known`` holds digests (by path under ``root``) computed on the way; ``record`` adds fields to
    the metadata (``downloads_sha256``, ``imported_from``).
    """
    meta = {
        "name": redact(entry.name),
        "fingerprint": entry.fingerprint(),
        "verified": verified,
        **record,
        "files_sha256": _tree_hashes(root, known),
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "index": entry.source,
    }
    write_text_atomic(root / META_NAME, json.dumps(meta, indent=1, ensure_ascii=False))
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(dest)
    publish_dir(root, dest)


def _hoisted(content: Path, known: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """The installed root of an archive's ``content`` and ``known`` digests relative to it."""
    root = _content_root(content)
    if root == content:
        return root, known
    prefix = root.relative_to(content).as_posix() + "/"
    return root, {k[len(prefix):]: v for k, v in known.items() if k.startswith(prefix)}


def _one_file_name(entry: ModelEntry) -> str:
    """Where the single remote file of a ``file`` entry goes in its checkpoint directory."""
    assert entry.uri is not None
    return PurePosixPath(urlsplit(entry.uri).path).name or "model.bin"


def _download_and_install(entry: ModelEntry, cache: Cache, dest: Path) -> None:
    from .archive import safe_extract  # tarfile/zipfile only when installing, not on cache hits

    policy = RetryPolicy.from_env()
    hint = import_hint(entry)
    downloads: dict[str, str] = {}
    known: dict[str, str] = {}  # digests of installed files computed while downloading them
    parts_to_remove: list[Path] = []
    try:
        with _staging(entry, cache) as content:
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
                                   policy=policy, label=label, hint=hint)
                    digest, archive = result.sha256, part
                    parts_to_remove.append(part)
                downloads[redact(entry.uri)] = digest
                if entry.sha256 is None:
                    _warn_unverified(entry, redact(entry.uri), digest)
                fmt = archive_format(entry.uri)
                if fmt is not None:
                    safe_extract(archive, content, fmt, label=label)
                else:  # one remote file (kind "file"): the partial download becomes the checkpoint file
                    os.replace(archive, content / _one_file_name(entry))
                    known[_one_file_name(entry)] = digest
            else:
                for f in entry.files:
                    assert f.uri is not None
                    label = f"model {entry.display} file {f.path} from {redact(f.uri)}"
                    part = cache.partial(entry, f.uri)
                    result = fetch(f.uri, part, expected_size=f.size, expected_sha256=f.sha256, policy=policy,
                                   label=label, hint=hint)
                    downloads[redact(f.uri)] = result.sha256
                    if f.sha256 is None:
                        _warn_unverified(entry, redact(f.uri), result.sha256)
                    target = content / f.path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(part, target)
                    known[PurePosixPath(f.path).as_posix()] = result.sha256
            root, known = _hoisted(content, known) if entry.kind == "archive" else (content, known)
            _publish(entry, root, dest, verified=entry.verified, known=known, downloads_sha256=downloads)
    finally:
        for part in parts_to_remove:  # verified archives: installed, or refused (e.g. unsafe members)
            part.unlink(missing_ok=True)


def import_copy(entry: ModelEntry, source: str | os.PathLike, cache: Cache) -> Path:
    """Install a copy of ``entry`` obtained elsewhere into ``cache``, exactly like a download.

    ``source`` is a folder, an archive (``.tgz``, ``.tar.gz``, ``.tar``, ``.zip``; its members are
    checked as a download's are) or, for an entry that is one file, that file. Whatever the index
    records is checked (the archive's or file's sha256 and size, each listed file's sha256 and size);
    a mismatch installs nothing. The result is recorded in the install metadata and installed by an
    atomic rename under the name's lock, replacing an earlier installation; afterwards the name
    resolves from the cache, offline too. Returns the installed directory.
    """
    if entry.kind == "local":
        raise ModelZooError(f"model {entry.display} is the local directory {entry.uri}; there is nothing "
                            "to import into the cache")
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelZooError(f"{path}: no such file or directory (to import as model {entry.display})")
    if not path.is_dir() and archive_format(path.name) is None and entry.kind != "file":
        raise ModelZooError(f"{path}: not a folder nor a .tgz/.tar.gz/.tar/.zip archive (to import as "
                            f"model {entry.display})")
    dest = cache.install_dir(entry)
    _locked(entry, cache, lambda: _import_and_install(entry, path.resolve(), cache, dest))
    return dest


def _import_and_install(entry: ModelEntry, source: Path, cache: Cache, dest: Path) -> None:
    from .archive import check_folder, safe_extract

    label = f"import of model {entry.display} from {source}"
    digest: str | None = None
    checked: list[str] = []  # what the index vouched for, as checked
    with _staging(entry, cache) as content:
        if source.is_dir():
            if entry.kind == "archive" and entry.sha256 is not None:
                raise ChecksumError(f"{label}: the index verifies this model by the sha256 of its archive "
                                    f"({redact(entry.uri or '')}); import that archive file, not a folder")
            check_folder(source, label)
            shutil.copytree(source, content / "copy", symlinks=True)
            root = content / "copy"
            (root / META_NAME).unlink(missing_ok=True)  # a copy of another cache's installation
        else:
            digest = sha256_file(source).hexdigest()
            size = source.stat().st_size
            fmt = archive_format(source.name)
            # the index's sha256 and size are those of the archive, or of the one file of a "file" entry
            if entry.kind == "archive" or (entry.kind == "file" and fmt is None):
                if entry.size is not None and size != entry.size:
                    raise ChecksumError(f"{label}: {size} bytes, the index says {entry.size}; nothing installed")
                if entry.sha256 is not None:
                    if digest != entry.sha256:
                        raise ChecksumError(f"{label}: sha256 mismatch: expected {entry.sha256}, got {digest}; "
                                            "nothing installed")
                    checked.append("sha256")
            if fmt is not None:
                safe_extract(source, content, fmt, label=label)
                root = _content_root(content)
            else:  # the one file of a "file" entry
                shutil.copyfile(source, content / _one_file_name(entry))
                root = content
        _check_imported_files(entry, root, label, checked)
        verified = entry.verified and bool(checked)
        if not verified:
            _warn_unverified(entry, f"the copy imported from {source}", digest)
        _publish(entry, root, dest, verified=verified, known={}, downloads_sha256={},
                 imported_from={"path": str(source), "sha256": digest})


def _check_imported_files(entry: ModelEntry, root: Path, label: str, checked: list[str]) -> None:
    """The files of an imported copy against the index: each listed file, or the one file."""
    expected = [(f.path, f.sha256, f.size) for f in entry.files]
    if entry.kind == "file" and not checked:
        expected = [(_one_file_name(entry), entry.sha256, entry.size)]
    for rel, sha, size in expected:
        file = root / rel
        if not file.is_file():
            raise ChecksumError(f"{label}: {rel} is missing (the index lists it); nothing installed")
        if size is not None and file.stat().st_size != size:
            raise ChecksumError(f"{label}: {rel} has {file.stat().st_size} bytes, the index says {size}; "
                                "nothing installed")
        if sha is not None:
            if sha256_file(file).hexdigest() != sha:
                raise ChecksumError(f"{label}: {rel}: sha256 differs from the index; nothing installed")
            checked.append(rel)


def _verify_local(entry: ModelEntry) -> VerifyReport:
    """A local directory against the index's file list (its manifest): size, then sha256, of each."""
    try:
        path = local_entry_dir(entry)
    except ModelZooError as e:
        return VerifyReport(redact(entry.name), None, [str(e)])
    report = VerifyReport(redact(entry.name), path)
    if not entry.files:
        report.notes.append(f"the index ({entry.source}) lists no files for this directory; nothing to check "
                            "(`python -m modelzoo manifest NAME --index FILE` writes the list)")
    for f in entry.files:
        file = path / f.path
        if not file.is_file():
            report.problems.append(f"{f.path}: missing")
            continue
        report.checked += 1
        size = file.stat().st_size
        if f.size is not None and size != f.size:
            report.problems.append(f"{f.path}: {size} bytes, the index says {f.size}")
        elif f.sha256 is not None and sha256_file(file).hexdigest() != f.sha256:
            report.problems.append(f"{f.path}: sha256 differs from the index")
    listed = {PurePosixPath(f.path).as_posix() for f in entry.files}
    extra = [rel for rel, _ in tree_files(path) if rel not in listed] if entry.files else []
    if extra:
        report.notes.append(f"not in the index's file list (not checked): {', '.join(extra[:5])}"
                            + (f" and {len(extra) - 5} more" if len(extra) > 5 else ""))
    return report


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
        return _verify_local(entry)
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
