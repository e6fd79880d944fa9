"""ModelZoo: checkpoint registry — names to object-storage URIs, verified downloads, local cache.

    >>> import modelzoo
    >>> path = modelzoo.resolve("alibaba-pai/pai-artist-knowl-base-zh")   # or a URI, or a directory

See :mod:`modelzoo.hub` (resolution and cache), :mod:`modelzoo.index` (registry format),
:mod:`modelzoo.storage` (local/file/package/http(s)/s3/oss I/O) and :mod:`modelzoo.cli`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ChecksumError, ModelZooError, StorageError, UnknownModelError, UnsafeArchiveError
from .hub import UnverifiedDownloadWarning, default_cache_dir, is_offline, resolve
from .index import ModelEntry, ModelFile, load_registry

__all__ = [
    "ChecksumError",
    "ModelEntry",
    "ModelFile",
    "ModelZooError",
    "StorageError",
    "UnknownModelError",
    "UnsafeArchiveError",
    "UnverifiedDownloadWarning",
    "default_cache_dir",
    "get_entry",
    "list_models",
    "resolve",
]


def list_models(*, cache_dir: str | os.PathLike | None = None, offline: bool | None = None) -> list[ModelEntry]:
    """Every registered entry (shipped index plus ``EASYNLP_MODELZOO_INDEX``), sorted by name."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    registry = load_registry(root, is_offline(offline))
    return [registry.entries[name] for name in sorted(registry.entries)]


def get_entry(name: str, *, cache_dir: str | os.PathLike | None = None,
              offline: bool | None = None) -> ModelEntry:
    """The index entry registered as ``name``; :class:`ModelZooError` if there is none."""
    for entry in list_models(cache_dir=cache_dir, offline=offline):
        if entry.name == name:
            return entry
    raise UnknownModelError(f"{name!r} is not a model name in the index; see `python -m modelzoo list`")
