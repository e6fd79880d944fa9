"""The registry: checkpoint names → where their files live, with checksums.

An index is a JSON file::

    {
      "format": "easynlp-modelzoo-index",
      "version": 1,
      "models": {
        "org/name": {
          "uri": "https://host/path/name.tgz",      # an archive, a single file, or a local directory
          "sha256": "<64 hex digits>" | null,         # of the archive/file; null = unverified
          "size": 12345 | null,                       # bytes of the archive/file
          "description": "...", "license": "...",
          "files": [                                  # optional
            {"path": "config.json", "uri": "...", "sha256": "...", "size": 1}
          ]
        }
      }
    }

An entry has either ``uri`` or ``files`` whose items all carry a ``uri`` (each file is downloaded to
``path`` inside the checkpoint directory). With a local-directory ``uri`` (``package://``, ``file://`` or
a path), ``files`` items without ``uri`` list optional per-file checksums used by ``verify``.
Relative local paths in a user index are relative to the index file.

The index shipped with the package is read first; ``EASYNLP_MODELZOO_INDEX`` names more (paths or URIs,
same schema, several separated by ``;``) whose entries override earlier ones of the same name.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelZooError
from .storage import is_remote, local_path, open_uri, redact, scheme_of

INDEX_FORMAT = "easynlp-modelzoo-index"
INDEX_VERSION = 1
SHIPPED_INDEX = Path(__file__).with_name("index.json")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_ENTRY_KEYS = {"uri", "sha256", "size", "description", "license", "files"}
_FILE_KEYS = {"path", "uri", "sha256", "size"}


@dataclass(frozen=True)
class ModelFile:
    """One file of a checkpoint: where it goes (``path``), where it comes from, its checksum."""

    path: str
    uri: str | None = None
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class ModelEntry:
    name: str
    uri: str | None = None
    sha256: str | None = None
    size: int | None = None
    description: str = ""
    license: str = ""
    files: tuple[ModelFile, ...] = ()
    source: str = ""  # the index this entry came from

    @property
    def display(self) -> str:
        """The name as shown in messages (direct-URI entries are named by their URI: redacted)."""
        return repr(redact(self.name)) if scheme_of(self.name) else repr(self.name)

    @property
    def kind(self) -> str:
        """``archive``, ``file`` (one remote file), ``local`` (a local directory) or ``files``."""
        if self.uri is None:
            return "files"
        if archive_format(self.uri) is not None:
            return "archive"
        return "file" if is_remote(self.uri) else "local"

    @property
    def total_size(self) -> int | None:
        """Bytes of the checkpoint as the index knows them: ``size``, else the sum of the listed files'
        sizes when every one is known (a local directory's manifest, a per-file download)."""
        if self.size is not None:
            return self.size
        if self.files and all(f.size is not None for f in self.files):
            return sum(f.size for f in self.files if f.size is not None)
        return None

    @property
    def verified(self) -> bool:
        """True when every downloaded byte is checked against a sha256 from the index."""
        if self.kind in ("archive", "file"):
            return self.sha256 is not None
        if self.kind == "files":
            return all(f.sha256 is not None for f in self.files)
        return True  # a local directory is not downloaded

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the installed content; a changed fingerprint means reinstall."""
        return {
            "uri": redact(self.uri) if self.uri else None,
            "sha256": self.sha256,
            "files": [[f.path, redact(f.uri) if f.uri else None, f.sha256] for f in self.files],
        }


def archive_format(uri: str) -> str | None:
    """``"tar"`` or ``"zip"`` from the URI's suffix, else ``None``."""
    path = uri.split("?", 1)[0].lower()
    if path.endswith(".zip"):
        return "zip"
    if path.endswith(ARCHIVE_SUFFIXES):
        return "tar"
    return None


def cache_key(name: str) -> str:
    """Directory name of ``name`` in the cache (``org/name`` → ``org--name``)."""
    return name.replace("/", "--")


def _locate(text: str, needle: str) -> str:
    """``line:col`` (1-based) of the first occurrence of ``needle`` in ``text``, or ``1:1``."""
    pos = text.find(needle)
    if pos < 0:
        return "1:1"
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"{line}:{col}"


class _Checker:
    """Validates one index document; errors name the file, 1-based line and column, and the field."""

    def __init__(self, source: str, text: str, base_dir: Path | None):
        self.source, self.text, self.base_dir = source, text, base_dir

    def fail(self, name: str | None, message: str) -> ModelZooError:
        where = _locate(self.text, json.dumps(name, ensure_ascii=False)) if name else "1:1"
        prefix = f"models[{name!r}]: " if name else ""
        return ModelZooError(f"{self.source}:{where}: {prefix}{message}")

    def optional(self, name: str, obj: dict[str, Any], key: str, kind: type, what: str) -> Any:
        value = obj.get(key)
        if value is None:
            return None
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise self.fail(name, f"{what}{key} must be a non-negative integer, got {value!r}")
        if not isinstance(value, kind):
            raise self.fail(name, f"{what}{key} must be a {kind.__name__}, got {value!r}")
        if key == "sha256" and not SHA256_RE.match(value):
            raise self.fail(name, f"{what}sha256 must be 64 lower-case hex digits, got {value!r}")
        return value

    def location(self, name: str, value: str | None) -> str | None:
        """Relative local paths are taken relative to the index file."""
        if value is None or scheme_of(value) or Path(value).expanduser().is_absolute():
            return value
        if self.base_dir is None:
            raise self.fail(name, f"relative path {value!r} in an index that is not a local file")
        return str(self.base_dir / value)

    def entry(self, name: str, obj: Any) -> ModelEntry:
        if not NAME_RE.match(name) or "--" in name:
            raise self.fail(name, "a name is [org/]name of letters, digits, '.', '_', '-' (no '--')")
        if not isinstance(obj, dict):
            raise self.fail(name, f"expected an object, got {type(obj).__name__}")
        unknown = set(obj) - _ENTRY_KEYS
        if unknown:
            raise self.fail(name, f"unknown field(s) {sorted(unknown)}; expected {sorted(_ENTRY_KEYS)}")
        uri = self.location(name, self.optional(name, obj, "uri", str, ""))
        files_raw = obj.get("files") or []
        if not isinstance(files_raw, list):
            raise self.fail(name, "files must be a list")
        files = []
        for i, item in enumerate(files_raw):
            what = f"files[{i}]."
            if not isinstance(item, dict) or not isinstance(item.get("path"), str):
                raise self.fail(name, f"{what[:-1]} must be an object with a 'path' string")
            unknown = set(item) - _FILE_KEYS
            if unknown:
                raise self.fail(name, f"{what[:-1]} has unknown field(s) {sorted(unknown)}")
            path = item["path"]
            if path.startswith(("/", "\\")) or ".." in Path(path).parts or not path.strip():
                raise self.fail(name, f"{what}path {path!r} must be relative without '..'")
            file_uri = self.location(name, self.optional(name, item, "uri", str, what))
            files.append(ModelFile(path, file_uri, self.optional(name, item, "sha256", str, what),
                                   self.optional(name, item, "size", int, what)))
        if uri is None and (not files or any(f.uri is None for f in files)):
            raise self.fail(name, "needs a 'uri', or 'files' that each have a 'uri'")
        if uri is not None and files and any(f.uri for f in files):
            raise self.fail(name, "give either 'uri' or per-file 'uri's, not both")
        if uri is not None and files and (archive_format(uri) or is_remote(uri)):
            raise self.fail(name, "per-file checksums ('files' without 'uri') only go with a local directory")
        return ModelEntry(
            name=name,
            uri=uri,
            sha256=self.optional(name, obj, "sha256", str, ""),
            size=self.optional(name, obj, "size", int, ""),
            description=self.optional(name, obj, "description", str, "") or "",
            license=self.optional(name, obj, "license", str, "") or "",
            files=tuple(files),
            source=self.source,
        )


def parse_index(text: str, source: str, base_dir: Path | None = None) -> dict[str, ModelEntry]:
    """Entries of one index document. ``source`` names it in errors."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelZooError(f"{source}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from e
    checker = _Checker(source, text, base_dir)
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise checker.fail(None, "an index is an object with a 'models' object")
    if doc.get("format", INDEX_FORMAT) != INDEX_FORMAT:
        where = _locate(text, '"format"')
        raise ModelZooError(f"{source}:{where}: format must be {INDEX_FORMAT!r}")
    if doc.get("version", INDEX_VERSION) != INDEX_VERSION:
        where = _locate(text, '"version"')
        raise ModelZooError(f"{source}:{where}: unsupported index version "
                            f"{doc.get('version')!r} (this ModelZoo reads version {INDEX_VERSION})")
    return {name: checker.entry(name, obj) for name, obj in doc["models"].items()}


_parsed_local: dict[tuple[str, str], dict[str, ModelEntry]] = {}


def _load_local(path: Path, source: str) -> dict[str, ModelEntry]:
    """Parsed entries of a local index; re-read every call (small), parsed once per distinct content."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ModelZooError(f"{source}: cannot read index: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ModelZooError(f"{source}: index is not UTF-8 ({e.reason} at byte {e.start})") from e
    key = (str(path), text)
    if key not in _parsed_local:
        _parsed_local[key] = parse_index(text, source, path.parent.resolve())
    return _parsed_local[key]


_parsed_remote: dict[str, dict[str, ModelEntry]] = {}


def _load_remote(uri: str, cache_dir: Path, offline: bool, why: str) -> dict[str, ModelEntry]:
    """A remote index is fetched once per process and kept in the cache for offline use."""
    import hashlib

    if uri in _parsed_remote:
        return _parsed_remote[uri]
    saved = cache_dir / "indexes" / (hashlib.sha256(uri.encode()).hexdigest()[:24] + ".json")
    if offline:
        if not saved.is_file():
            raise ModelZooError(f"offline mode ({why}): index {redact(uri)} was never fetched; missing {saved}")
        text = saved.read_text(encoding="utf-8")
    else:
        try:
            with open_uri(uri, "r") as f:
                text = f.read()
        except ModelZooError as e:
            raise ModelZooError(f"cannot read index EASYNLP_MODELZOO_INDEX={redact(uri)}: {e}") from e
    entries = parse_index(text, redact(uri))
    if not offline:
        saved.parent.mkdir(parents=True, exist_ok=True)
        with open_uri(str(saved), "w") as f:
            f.write(text)
    _parsed_remote[uri] = entries
    return entries


@dataclass
class Registry:
    """All entries visible now: shipped index, overridden by the user's."""

    entries: dict[str, ModelEntry] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    def get(self, name: str) -> ModelEntry | None:
        return self.entries.get(name)


def load_registry(cache_dir: Path, offline: bool, offline_why: str = "EASYNLP_MODELZOO_OFFLINE=1") -> Registry:
    """The shipped index, then those named by ``EASYNLP_MODELZOO_INDEX``. ``offline_why`` says in
    messages who asked for offline mode."""
    registry = Registry()
    registry.entries.update(_load_local(SHIPPED_INDEX, str(SHIPPED_INDEX)))
    registry.sources.append(str(SHIPPED_INDEX))
    for extra in filter(None, (x.strip() for x in os.environ.get("EASYNLP_MODELZOO_INDEX", "").split(";"))):
        if is_remote(extra):
            registry.entries.update(_load_remote(extra, cache_dir, offline, offline_why))
            registry.sources.append(redact(extra))
        else:
            path = local_path(extra)
            assert path is not None
            registry.entries.update(_load_local(path, f"EASYNLP_MODELZOO_INDEX={extra}"))
            registry.sources.append(str(path))
    return registry
