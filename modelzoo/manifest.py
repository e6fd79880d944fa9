"""Manifests of local checkpoint directories: the sha256 and size of every file, kept in the index.

A local-directory entry (``package://``, ``file://`` or a path) lists its files without ``uri``::

    "artist-shapes-tiny-zh": {"uri": "package://...", "files": [{"path": "config.json", "sha256": "...",
                                                                 "size": 653}, ...]}

so that ``python -m modelzoo list`` shows its size and ``verify`` re-hashes every file. After the
folder changes (the embedded model retrained), regenerate the list with::

    python -m modelzoo manifest artist-shapes-tiny-zh            # rewrites modelzoo/index.json
    python -m modelzoo manifest NAME --index my-index.json       # an entry of another index file
"""

from __future__ import annotations

import json
from difflib import get_close_matches
from pathlib import Path

from .download import sha256_file
from .errors import ModelZooError, UnknownModelError
from .files import write_text_atomic
from .hub import local_entry_dir, tree_files
from .index import SHIPPED_INDEX, ModelFile, parse_index


def folder_files(folder: Path) -> list[ModelFile]:
    """Every regular file under ``folder`` (links not followed, no install metadata), by POSIX path."""
    return [ModelFile(rel, None, sha256_file(path).hexdigest(), path.stat().st_size)
            for rel, path in tree_files(folder)]


def write_manifest(name: str, index_file: Path = SHIPPED_INDEX) -> tuple[Path, list[ModelFile]]:
    """Re-hash the folder of the local-directory entry ``name`` of ``index_file`` and write its file
    list into that entry (the rest of the index is kept). Returns the folder and the files."""
    try:
        text = index_file.read_text(encoding="utf-8")
    except OSError as e:
        raise ModelZooError(f"{index_file}: cannot read index: {e.strerror or e}") from None
    entries = parse_index(text, str(index_file), index_file.parent.resolve())
    entry = entries.get(name)
    if entry is None:
        close = get_close_matches(name, list(entries), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownModelError(f"{name!r} is not a model name in {index_file}{hint}")
    if entry.kind != "local":
        raise ModelZooError(f"model {entry.display} in {index_file} is downloaded ({entry.kind}); a manifest is "
                            "for local directories (downloads are checked by the sha256 of what is downloaded)")
    folder = local_entry_dir(entry)
    files = folder_files(folder)
    doc = json.loads(text)
    doc["models"][name]["files"] = [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in files]
    new_text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    parse_index(new_text, str(index_file), index_file.parent.resolve())  # still a valid index
    write_text_atomic(index_file, new_text)
    return folder, files
