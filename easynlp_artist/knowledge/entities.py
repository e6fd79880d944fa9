"""Entity store: knowledge-graph entity names, their integer ids and their vectors (TransE space).

Two on-disk formats are read and written.

EasyNLP original (what the released ARTIST knowledge model used):

- ``entity2id.txt``: UTF-8; the first line is a header and is ignored (OpenKE writes the entity count
  there; we write it too); then one ``name<TAB>id`` per line. Whitespace around the name and the id is
  stripped. ``id`` is a non-negative integer, the row of the entity's vector. A name that appears again
  keeps its last id (as EasyNLP, which reads the file into a dict; CN-DBpedia-scale dictionaries have
  such repeats), with one warning counting them.
- ``entity2vec.pt``: ``torch.save`` of one float tensor ``(N, D)``; row ``id`` is the vector of entity ``id``.

Ours (``EntityStore.save`` / ``EntityStore.from_dir``):

- ``entities.safetensors``: ``vectors`` ``(N, D)`` float32 and ``ids`` ``(M,)`` int64;
- ``entity_names.txt``: ``M`` lines, UTF-8, no header; line ``k`` is the name of entity ``ids[k]``.

Both are validated on load: malformed lines, empty names, duplicate names (our format), duplicate ids,
ids outside the vector table, vectors that are not a 2-D float tensor or hold NaN/inf. Each error is an
:class:`EntityFileError` naming the file and the 1-based line and column. A dictionary with no names is
allowed (knowledge then does nothing) with a warning. ``D`` comes from the data (100 in the release).
Vectors are kept as float32. Not every vector row needs a name.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from modelzoo.files import atomic_path

from .errors import EntityFileError
from .relations import RelationSpace

ENTITY2ID_FILE = "entity2id.txt"
ENTITY2VEC_FILE = "entity2vec.pt"
SAFETENSORS_FILE = "entities.safetensors"
NAMES_FILE = "entity_names.txt"
VECTORS_ONLY = "vectors_only"  # safetensors metadata key of a store without names (entity2vec.pt alone)
_FORBIDDEN_IN_NAMES = ("\t", "\n", "\r")
_REPEATS_SHOWN = 5  # line numbers of repeated names named in the warning

logger = logging.getLogger(__name__)

# (row k of the name table) -> (path, line, column) of the name or of the id of that row
Where = Callable[[int], tuple[str | None, int | None, int | None]]


def _no_where(path: str | None) -> Where:
    return lambda k: (path, None, None)


def _check_vectors(vectors: object, path: str | None) -> torch.Tensor:
    if not isinstance(vectors, torch.Tensor):
        raise EntityFileError(f"expected a tensor (N, D), found {type(vectors).__name__}", path)
    if vectors.dim() != 2:
        raise EntityFileError(f"expected a 2-D tensor (N, D), found shape {tuple(vectors.shape)}", path)
    if not vectors.is_floating_point():
        raise EntityFileError(f"expected a float tensor, found {vectors.dtype}", path)
    finite = torch.isfinite(vectors).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise EntityFileError(f"vector row {row} (entity id {row}) holds NaN or inf", path)
    return vectors.detach().to(torch.float32).contiguous()


def _check_names(names: Sequence[str], ids: Sequence[int], num_vectors: int, name_at: Where, id_at: Where) -> None:
    """Empty/forbidden names, duplicate names or ids, ids outside ``[0, num_vectors)``."""
    if len(names) != len(ids):
        raise ValueError(f"{len(names)} names for {len(ids)} ids")
    first_name: dict[str, int] = {}
    first_id: dict[int, int] = {}
    for k, (name, i) in enumerate(zip(names, ids)):
        if not name:
            raise EntityFileError("empty entity name", *name_at(k))
        bad = next((c for c in _FORBIDDEN_IN_NAMES if c in name), None)
        if bad is not None:
            raise EntityFileError(f"entity name {name!r} contains {bad!r}", *name_at(k))
        if name in first_name:
            raise EntityFileError(
                f"duplicate entity name {name!r} (first at line {name_at(first_name[name])[1]})", *name_at(k)
            )
        if not 0 <= i < num_vectors:
            raise EntityFileError(f"entity id {i} is outside the vector table [0, {num_vectors})", *id_at(k))
        if i in first_id:
            raise EntityFileError(
                f"duplicate entity id {i} (first at line {id_at(first_id[i])[1]})", *id_at(k)
            )
        first_name[name] = k
        first_id[i] = k


class EntityStore:
    """Names ↔ ids and the vector table ``(N, D)``; ``len(store)`` is the number of named entities."""

    def __init__(
        self,
        names: Sequence[str],
        ids: Sequence[int],
        vectors: torch.Tensor,
        *,
        source: str | None = None,
        vectors_only: bool = False,
        relations: RelationSpace | None = None,
        _checked: bool = False,
    ) -> None:
        if not _checked:
            vectors = _check_vectors(vectors, source)
            ids = [int(i) for i in ids]
            _check_names(names, ids, vectors.shape[0], _no_where(source), _no_where(source))
        self.names: list[str] = list(names)
        self.ids: list[int] = list(ids)
        self.vectors: torch.Tensor = vectors  # (N, D) float32
        self.source = source
        # the TransE relations and score the vectors were trained with: what adding entities needs
        self.relations = relations
        self._id_of: dict[str, int] | None = None
        self._name_of: dict[int, str] | None = None
        # vectors without names (an entity2vec.pt alone): every row is an id, for preprocessed tables
        self.vectors_only = vectors_only and not self.names
        if not self.names and not vectors_only:
            warnings.warn(f"{source or 'entity store'}: no entity names; knowledge will do nothing", stacklevel=2)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"EntityStore({len(self)} names, vectors {tuple(self.vectors.shape)}, source={self.source!r})"

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @property
    def num_vectors(self) -> int:
        return self.vectors.shape[0]

    def items(self) -> Iterator[tuple[str, int]]:
        """``(name, id)`` pairs in file order."""
        return zip(self.names, self.ids)

    def id_of(self, name: str) -> int:
        """The id of an entity name (exact, unnormalised); ``KeyError`` if unknown."""
        if self._id_of is None:
            self._id_of = dict(self.items())
        return self._id_of[name]

    def _names_by_id(self) -> dict[int, str]:
        if self._name_of is None:
            self._name_of = dict(zip(self.ids, self.names))
        return self._name_of

    def name_of(self, entity_id: int) -> str:
        """The name of an entity id; ``KeyError`` if no name of the store has that id."""
        return self._names_by_id()[entity_id]

    def has_id(self, entity_id: int) -> bool:
        """Whether a name of the store has this id (a vector row alone does not count, except in a
        store of vectors only, where every row is an id)."""
        if self.vectors_only:
            return 0 <= entity_id < self.num_vectors
        return entity_id in self._names_by_id()

    def vectors_for(self, ids: Sequence[int]) -> torch.Tensor:
        """``(E, D)`` vectors of the given entity ids."""
        index = torch.as_tensor(list(ids), dtype=torch.long)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_vectors):
            bad = next(i for i in ids if not 0 <= i < self.num_vectors)
            raise ValueError(f"entity id {bad} is outside the vector table [0, {self.num_vectors})")
        return self.vectors[index]

    # ---- EasyNLP original format ------------------------------------------------------------------

    @classmethod
    def from_easynlp(cls, entity2id_path: str | os.PathLike, entity2vec_path: str | os.PathLike) -> EntityStore:
        """Read ``entity2id.txt`` (header line, then ``name<TAB>id``) and ``entity2vec.pt`` (tensor (N, D))."""
        entity2id_path, entity2vec_path = os.fspath(entity2id_path), os.fspath(entity2vec_path)
        return cls._with_entity2id(entity2id_path, read_entity2id(entity2id_path), _read_entity2vec(entity2vec_path))

    @classmethod
    def from_entity2vec(cls, entity2vec_path: str | os.PathLike) -> EntityStore:
        """``entity2vec.pt`` alone: vectors without names, enough for preprocessed tables (whose
        ``lex_id`` are rows of the table) but nothing is matched in raw text."""
        entity2vec_path = os.fspath(entity2vec_path)
        return cls([], [], _read_entity2vec(entity2vec_path), source=entity2vec_path, vectors_only=True, _checked=True)

    @classmethod
    def _with_entity2id(cls, path: str, entries: Entity2Id, vectors: torch.Tensor) -> EntityStore:
        _check_names(entries.names, entries.ids, vectors.shape[0], entries.name_at(path), entries.id_at(path))
        return cls(entries.names, entries.ids, vectors, source=path, _checked=True)

    @classmethod
    def from_entity2id(cls, entity2id_path: str | os.PathLike) -> EntityStore:
        """Names and ids only, from ``entity2id.txt`` without its vectors: enough to match and preprocess.

        The vector table is empty, ``(max id + 1, 0)`` (``dim`` 0), so it cannot feed a model.
        """
        entity2id_path = os.fspath(entity2id_path)
        entries = read_entity2id(entity2id_path)
        return cls._with_entity2id(entity2id_path, entries, torch.zeros(max(entries.ids, default=-1) + 1, 0))

    def save_easynlp(self, out_dir: str | os.PathLike) -> tuple[str | None, str]:
        """Write ``entity2id.txt`` (header: the number of names) and ``entity2vec.pt``; returns both paths.
        A store of vectors only writes ``entity2vec.pt`` alone (and returns None for the other)."""
        os.makedirs(out_dir, exist_ok=True)
        id_path = os.path.join(out_dir, ENTITY2ID_FILE)
        vec_path = os.path.join(out_dir, ENTITY2VEC_FILE)
        if self.vectors_only:
            with atomic_path(vec_path) as tmp:
                torch.save(self.vectors.clone(), tmp)
            return None, vec_path
        with atomic_path(id_path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(f"{len(self)}\n")
            for name, i in self.items():
                f.write(f"{name}\t{i}\n")
        with atomic_path(vec_path) as tmp:
            torch.save(self.vectors.clone(), tmp)
        if self.relations is not None:
            self.relations.save_easynlp(out_dir)
        return id_path, vec_path

    # ---- our format ---------------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> EntityStore:
        """Read ``entities.safetensors`` + ``entity_names.txt`` from a directory written by :meth:`save`."""
        path = os.fspath(path)
        st_path = os.path.join(path, SAFETENSORS_FILE)
        names_path = os.path.join(path, NAMES_FILE)
        try:
            tensors = load_file(st_path)
        except FileNotFoundError:
            raise
        except Exception as e:  # safetensors raises its own error type for a corrupt header
            raise EntityFileError(f"cannot read safetensors: {e}", st_path) from e
        for key in ("vectors", "ids"):
            if key not in tensors:
                raise EntityFileError(f"missing tensor {key!r} (found {sorted(tensors)})", st_path)
        vectors = _check_vectors(tensors["vectors"], st_path)
        ids_t = tensors["ids"]
        if ids_t.dim() != 1 or ids_t.is_floating_point() or ids_t.is_complex():
            raise EntityFileError(f"'ids' must be a 1-D integer tensor, found {ids_t.dtype} {tuple(ids_t.shape)}", st_path)
        ids = ids_t.tolist()
        names = []
        with open(names_path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                names.append(_decode(raw, names_path, lineno).rstrip("\r\n"))
        if len(names) != len(ids):
            raise EntityFileError(f"{len(names)} names for {len(ids)} ids in {st_path}", names_path)

        def name_at(k: int):
            return names_path, k + 1, 1

        def id_at(k: int):  # the k-th entry of the 'ids' tensor; reported as "line" k + 1 of the names
            return names_path, k + 1, None

        _check_names(names, ids, vectors.shape[0], name_at, id_at)
        with safe_open(st_path, "pt") as f:
            vectors_only = (f.metadata() or {}).get(VECTORS_ONLY) == "1"
        return cls(names, ids, vectors, source=path, vectors_only=vectors_only, _checked=True)

    def save(self, path: str | os.PathLike) -> None:
        """Write our format into directory ``path`` (created if needed)."""
        os.makedirs(path, exist_ok=True)
        metadata = {VECTORS_ONLY: "1"} if self.vectors_only else None
        with atomic_path(os.path.join(path, SAFETENSORS_FILE)) as tmp:
            save_file({"vectors": self.vectors, "ids": torch.tensor(self.ids, dtype=torch.long)}, tmp, metadata=metadata)
        with atomic_path(os.path.join(path, NAMES_FILE)) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for name in self.names:
                f.write(name + "\n")
        if self.relations is not None:
            self.relations.save(path)

    @classmethod
    def load(cls, path: str | os.PathLike, entity_map: str | os.PathLike | None = None) -> EntityStore:
        """Open either format (see :meth:`_load`), with the relation vectors stored beside it, if any."""
        store = cls._load(path, entity_map)
        path = os.fspath(path)
        store.relations = RelationSpace.load(path if os.path.isdir(path) else os.path.dirname(path) or ".")
        if store.relations is not None and store.relations.dim != store.dim:
            raise EntityFileError(f"relation vectors have width {store.relations.dim}, entity vectors {store.dim}", path)
        return store

    @classmethod
    def _load(cls, path: str | os.PathLike, entity_map: str | os.PathLike | None = None) -> EntityStore:
        """Open either format.

        ``path`` is our directory, a directory holding ``entity2id.txt`` + ``entity2vec.pt``, or the
        ``entity2vec.pt`` file itself: with ``entity_map`` naming its ``entity2id.txt``, else with the
        ``entity2id.txt`` beside it, else alone (vectors only: enough for preprocessed tables).
        """
        path = os.fspath(path)
        if entity_map is not None:
            return cls.from_easynlp(entity_map, path)
        if os.path.isfile(path):
            beside = os.path.join(os.path.dirname(path), ENTITY2ID_FILE)
            if os.path.isfile(beside):
                return cls.from_easynlp(beside, path)
            logger.info("%s: no %s beside it; its vectors serve preprocessed tables only", path, ENTITY2ID_FILE)
            return cls.from_entity2vec(path)
        if os.path.isfile(os.path.join(path, SAFETENSORS_FILE)):
            return cls.from_dir(path)
        if os.path.isfile(os.path.join(path, ENTITY2ID_FILE)):
            return cls.from_easynlp(os.path.join(path, ENTITY2ID_FILE), os.path.join(path, ENTITY2VEC_FILE))
        if os.path.isfile(os.path.join(path, ENTITY2VEC_FILE)):
            return cls._load(os.path.join(path, ENTITY2VEC_FILE))
        raise FileNotFoundError(
            f"{path}: no {SAFETENSORS_FILE} or {ENTITY2ID_FILE} there (pass entity_map= for an entity2vec.pt file)"
        )


def _read_entity2vec(path: str) -> torch.Tensor:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises several unrelated types for a corrupt file
        raise EntityFileError(f"cannot read a tensor: {e}", path) from e
    return _check_vectors(raw, path)


def _decode(raw: bytes, path: str, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EntityFileError(f"invalid UTF-8 ({e.reason})", path, lineno, e.start + 1) from e


@dataclass
class Entity2Id:
    """The entries of an ``entity2id.txt``, one per distinct name, with where each was read."""

    names: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # 1-based line of the id kept for each name
    name_cols: list[int] = field(default_factory=list)
    id_cols: list[int] = field(default_factory=list)
    repeated_lines: list[int] = field(default_factory=list)  # lines that repeated an earlier name

    def name_at(self, path: str) -> Where:
        return lambda k: (path, self.lines[k], self.name_cols[k])

    def id_at(self, path: str) -> Where:
        return lambda k: (path, self.lines[k], self.id_cols[k])


def read_entity2id(path: str | os.PathLike) -> Entity2Id:
    """Parse ``entity2id.txt``: a header line, then ``name<TAB>id`` entries from line 2 on.

    Checks the line format (two tab-separated fields, non-empty name, non-negative integer id).
    A name given again keeps its LAST id, as EasyNLP (which reads the file into a dict) does, and the
    place of its first line; the repeats are counted in one warning. Duplicate ids among the kept
    entries and id ranges are checked by the store.
    """
    path = os.fspath(path)
    out = Entity2Id()
    position: dict[str, int] = {}
    with open(path, "rb") as f:
        header = f.readline()
        _decode(header, path, 1)
        for lineno, raw in enumerate(f, 2):
            line = _decode(raw, path, lineno).rstrip("\r\n")
            fields = line.split("\t")
            if len(fields) != 2:
                raise EntityFileError(f"expected 'name<TAB>id', found {len(fields)} field(s)", path, lineno, 1)
            name, id_text = fields[0].strip(), fields[1].strip()
            id_col = len(fields[0]) + 2
            if not name:
                raise EntityFileError("empty entity name", path, lineno, 1)
            if not id_text.isdigit() or not id_text.isascii():
                raise EntityFileError(f"entity id must be a non-negative integer, found {fields[1]!r}", path, lineno, id_col)
            name_col = 1 + len(fields[0]) - len(fields[0].lstrip())
            k = position.get(name)
            if k is None:
                position[name] = len(out.names)
                out.names.append(name)
                out.ids.append(int(id_text))
                out.lines.append(lineno)
                out.name_cols.append(name_col)
                out.id_cols.append(id_col)
            else:
                out.repeated_lines.append(lineno)
                out.ids[k], out.lines[k], out.name_cols[k], out.id_cols[k] = int(id_text), lineno, name_col, id_col
    if out.repeated_lines:
        shown = ", ".join(map(str, out.repeated_lines[:_REPEATS_SHOWN]))
        more = ", ..." if len(out.repeated_lines) > _REPEATS_SHOWN else ""
        logger.warning(
            "%s: %d repeated entity name(s), each keeping its last id as EasyNLP does (lines %s%s)",
            path, len(out.repeated_lines), shown, more,
        )
    return out
