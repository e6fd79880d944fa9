"""Relation vectors of the TransE space, and how its score measures distance: what extending a
trained entity store needs (:mod:`.extend`).

TransE scores a triple ``(h, r, t)`` by the distance ``‖h + r − t‖_p``. Our training
(:mod:`.transe`, PyKEEN's TransE) uses ``p = 1``, not squared, and keeps every entity vector at unit
L2 length (PyKEEN's entity constraint); relation vectors are unconstrained.

Files, written next to the entity vectors:

- ours: ``relations.safetensors`` (``vectors`` ``(R, D)`` float32; metadata ``scoring_norm``,
  ``squared``, ``entity_norm``) + ``relation_names.txt`` (line ``k``: the name of row ``k``);
- EasyNLP/OpenKE style: ``relation2id.txt`` (a header line with the count, then ``name<TAB>id``) +
  ``relation2vec.pt`` (``torch.save`` of the ``(R, D)`` tensor) + ``transe.json`` (the score settings).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from modelzoo.files import atomic_path, write_text_atomic

from .errors import EntityFileError

SAFETENSORS_FILE = "relations.safetensors"
NAMES_FILE = "relation_names.txt"
RELATION2ID_FILE = "relation2id.txt"
RELATION2VEC_FILE = "relation2vec.pt"
SCORE_FILE = "transe.json"
ENTITY_NORMS = ("unit", "none")


@dataclass
class RelationSpace:
    """Relation names, their vectors ``(R, D)`` and the score: ``‖h + r − t‖_p`` (squared or not);
    ``entity_norm="unit"``: entity vectors live on the unit sphere."""

    names: list[str]
    vectors: torch.Tensor  # (R, D) float32
    scoring_norm: int = 1
    squared: bool = False
    entity_norm: str = "unit"

    def __post_init__(self) -> None:
        if self.vectors.dim() != 2 or self.vectors.shape[0] != len(self.names):
            raise ValueError(f"{len(self.names)} relation names for vectors of shape {tuple(self.vectors.shape)}")
        if len(set(self.names)) != len(self.names):
            raise ValueError("duplicate relation names")
        if self.scoring_norm not in (1, 2):
            raise ValueError(f"scoring_norm must be 1 or 2, got {self.scoring_norm}")
        if self.entity_norm not in ENTITY_NORMS:
            raise ValueError(f"entity_norm must be one of {ENTITY_NORMS}, got {self.entity_norm!r}")
        self.vectors = self.vectors.detach().to(torch.float32).contiguous()
        self._index = {n: i for i, n in enumerate(self.names)}

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def vector(self, name: str) -> torch.Tensor:
        """The ``(D,)`` vector of a relation; ``KeyError`` if unknown."""
        return self.vectors[self._index[name]]

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def describe(self) -> str:
        return (f"L{self.scoring_norm}{' squared' if self.squared else ''} distance, "
                f"{'unit-length' if self.entity_norm == 'unit' else 'unconstrained'} entity vectors")

    def _settings(self) -> dict[str, str]:
        return {"scoring_norm": str(self.scoring_norm), "squared": "1" if self.squared else "0",
                "entity_norm": self.entity_norm}

    # ---- files --------------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        with atomic_path(os.path.join(directory, SAFETENSORS_FILE)) as tmp:
            save_file({"vectors": self.vectors}, tmp, metadata=self._settings())
        write_text_atomic(os.path.join(directory, NAMES_FILE), "".join(n + "\n" for n in self.names))

    def save_easynlp(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        lines = [f"{len(self.names)}\n"] + [f"{n}\t{i}\n" for i, n in enumerate(self.names)]
        write_text_atomic(os.path.join(directory, RELATION2ID_FILE), "".join(lines))
        with atomic_path(os.path.join(directory, RELATION2VEC_FILE)) as tmp:
            torch.save(self.vectors.clone(), tmp)
        settings = {"scoring_norm": self.scoring_norm, "squared": self.squared, "entity_norm": self.entity_norm}
        write_text_atomic(os.path.join(directory, SCORE_FILE), json.dumps(settings, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> RelationSpace | None:
        """The relations stored in ``directory`` (either format), or None when there are none."""
        directory = os.fspath(directory)
        ours = os.path.join(directory, SAFETENSORS_FILE)
        if os.path.isfile(ours):
            return cls._load_ours(directory, ours)
        if os.path.isfile(os.path.join(directory, RELATION2VEC_FILE)):
            return cls._load_easynlp(directory)
        return None

    @classmethod
    def _load_ours(cls, directory: str, path: str) -> RelationSpace:
        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
                vectors = f.get_tensor("vectors")
        except Exception as exc:  # safetensors raises its own error types for a corrupt file
            raise EntityFileError(f"cannot read relation vectors: {exc}", path) from exc
        names_path = os.path.join(directory, NAMES_FILE)
        with open(names_path, encoding="utf-8") as f:
            names = [line.rstrip("\r\n") for line in f]
        try:
            return cls(names, vectors, int(meta.get("scoring_norm", "1")), meta.get("squared") == "1",
                       meta.get("entity_norm", "unit"))
        except ValueError as exc:
            raise EntityFileError(str(exc), path) from exc

    @classmethod
    def _load_easynlp(cls, directory: str) -> RelationSpace:
        vec_path = os.path.join(directory, RELATION2VEC_FILE)
        id_path = os.path.join(directory, RELATION2ID_FILE)
        try:
            vectors = torch.load(vec_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several unrelated types for a corrupt file
            raise EntityFileError(f"cannot read a tensor: {exc}", vec_path) from exc
        if not isinstance(vectors, torch.Tensor) or vectors.dim() != 2:
            raise EntityFileError("expected a tensor (R, D)", vec_path)
        names: list[str | None] = [None] * vectors.shape[0]
        with open(id_path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if lineno == 1:
                    continue
                name, sep, id_text = line.rstrip("\r\n").partition("\t")
                if not sep or not id_text.strip().isdigit() or not 0 <= int(id_text) < len(names):
                    raise EntityFileError(f"expected 'name<TAB>id' with id in [0, {len(names)})", id_path, lineno, 1)
                names[int(id_text)] = name.strip()
        if any(n is None for n in names):
            raise EntityFileError(f"relation row {names.index(None)} has no name", id_path)
        settings = {}
        score_path = os.path.join(directory, SCORE_FILE)
        if os.path.isfile(score_path):
            with open(score_path, encoding="utf-8") as f:
                settings = json.load(f)
        try:
            return cls(names, vectors, int(settings.get("scoring_norm", 1)), bool(settings.get("squared", False)),
                       settings.get("entity_norm", "unit"))
        except ValueError as exc:
            raise EntityFileError(str(exc), score_path) from exc
