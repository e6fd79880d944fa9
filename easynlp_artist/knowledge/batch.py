"""The knowledge a batch carries into the model: entity vectors, the token spans they cover, a mask.

This is the only knowledge type the stage-2 model sees. Padding slots are marked by ``mask`` —
never by a reserved entity id — so entity id 0 is an ordinary entity.

The release's fusion (``GPTConfig.knowledge_fusion="output"``) also needs what EasyNLP's id matrix
held besides the entities: a fixed number of slots (``entity_num``, empty ones included) and the
vector of row 0 of ``entity2vec.pt`` ("nothing"), which filled every cell no entity covers. Both are
added by :meth:`KnowledgeInputs.with_nothing`: padding slots count as all-"nothing" slots there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch


@dataclass
class KnowledgeInputs:
    vectors: torch.Tensor  # (B, E, D) float: entity vectors (TransE space, D from the data)
    starts: torch.Tensor  # (B, E) long: first text token the entity covers
    ends: torch.Tensor  # (B, E) long: one past the last covered token (half-open span)
    mask: torch.Tensor  # (B, E) bool: True for a real entity, False for padding
    # (B, D) float or None: the vector of row 0 of the release's table, the filler of uncovered cells
    # (only the "output" fusion reads it; with it, every one of the E slots takes part there)
    nothing: torch.Tensor | None = None

    def __post_init__(self) -> None:
        b, e = self.mask.shape
        if self.nothing is not None and self.nothing.shape != (b, self.vectors.shape[-1]):
            raise ValueError(f"nothing must be (B, D) = ({b}, {self.vectors.shape[-1]}), got {tuple(self.nothing.shape)}")
        if self.vectors.dim() != 3 or self.vectors.shape[:2] != (b, e):
            raise ValueError(f"vectors must be (B, E, D) = ({b}, {e}, D), got {tuple(self.vectors.shape)}")
        if self.starts.shape != (b, e) or self.ends.shape != (b, e):
            raise ValueError(
                f"starts/ends must be (B, E) = ({b}, {e}), got {tuple(self.starts.shape)}/{tuple(self.ends.shape)}"
            )

    @property
    def dim(self) -> int:
        return self.vectors.shape[-1]

    def coverage(self, text_len: int) -> torch.Tensor:
        """(B, text_len, E) bool: token t is covered by entity e (and e is real)."""
        t = torch.arange(text_len, device=self.starts.device).view(1, -1, 1)
        return (t >= self.starts.unsqueeze(1)) & (t < self.ends.unsqueeze(1)) & self.mask.unsqueeze(1)

    def to(self, device=None, dtype=None) -> KnowledgeInputs:
        return KnowledgeInputs(
            self.vectors.to(device=device, dtype=dtype),
            self.starts.to(device),
            self.ends.to(device),
            self.mask.to(device),
            None if self.nothing is None else self.nothing.to(device=device, dtype=dtype),
        )

    def index_select(self, index: torch.Tensor) -> KnowledgeInputs:
        """Rows picked (or repeated) by ``index``, e.g. to repeat each prompt per sample."""
        return KnowledgeInputs(
            self.vectors[index], self.starts[index], self.ends[index], self.mask[index],
            None if self.nothing is None else self.nothing[index],
        )

    def cat(self, other: KnowledgeInputs) -> KnowledgeInputs:
        """These rows, then ``other``'s (same E and D)."""
        if (self.nothing is None) != (other.nothing is None):
            raise ValueError("cannot join knowledge with and without the 'nothing' vector")
        parts = zip(
            (self.vectors, self.starts, self.ends, self.mask, self.nothing),
            (other.vectors, other.starts, other.ends, other.mask, other.nothing),
        )
        return KnowledgeInputs(*(None if a is None else torch.cat([a, b]) for a, b in parts))

    def with_mask(self, mask: torch.Tensor) -> KnowledgeInputs:
        """The same slots with another mask (e.g. all False: no entities)."""
        return replace(self, mask=mask)

    def with_nothing(self, nothing: torch.Tensor, slots: int) -> KnowledgeInputs:
        """The release's input: at least ``slots`` slots (padding ones empty) and the "nothing" vector
        (D,) of row 0 of its table, for every row."""
        b, e = self.mask.shape
        pad = max(slots - e, 0)
        nothing = nothing.to(self.vectors).expand(b, self.dim).clone()
        if not pad:
            return replace(self, nothing=nothing)
        z = self.starts.new_zeros(b, pad)
        return KnowledgeInputs(
            torch.cat([self.vectors, self.vectors.new_zeros(b, pad, self.dim)], 1),
            torch.cat([self.starts, z], 1), torch.cat([self.ends, z], 1),
            torch.cat([self.mask, z.bool()], 1), nothing,
        )

    @staticmethod
    def empty(batch: int, dim: int, device=None, dtype=torch.float32) -> KnowledgeInputs:
        """A batch with no entities at all (E = 0)."""
        z = torch.zeros(batch, 0, dtype=torch.long, device=device)
        return KnowledgeInputs(
            torch.zeros(batch, 0, dim, dtype=dtype, device=device), z, z.clone(), z.bool()
        )

    @staticmethod
    def from_lists(
        vectors: Sequence[torch.Tensor], spans: Sequence[Sequence[tuple[int, int]]], dim: int
    ) -> KnowledgeInputs:
        """Pad per-row lists: ``vectors[i]`` is (E_i, D), ``spans[i]`` has E_i half-open (start, end)."""
        b = len(vectors)
        e = max((len(s) for s in spans), default=0)
        out_v = torch.zeros(b, e, dim)
        starts = torch.zeros(b, e, dtype=torch.long)
        ends = torch.zeros(b, e, dtype=torch.long)
        mask = torch.zeros(b, e, dtype=torch.bool)
        for i, (v, sp) in enumerate(zip(vectors, spans)):
            n = len(sp)
            if v.shape[0] != n:
                raise ValueError(f"row {i}: {v.shape[0]} vectors for {n} spans")
            if n:
                out_v[i, :n] = v
                starts[i, :n] = torch.tensor([s for s, _ in sp])
                ends[i, :n] = torch.tensor([t for _, t in sp])
                mask[i, :n] = True
        return KnowledgeInputs(out_v, starts, ends, mask)
