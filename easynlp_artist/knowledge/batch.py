"""The knowledge a batch carries into the model: entity vectors, the token spans they cover, a mask.

This is the only knowledge type the stage-2 model sees. Padding slots are marked by ``mask`` —
never by a reserved entity id — so entity id 0 is an ordinary entity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class KnowledgeInputs:
    vectors: torch.Tensor  # (B, E, D) float: entity vectors (TransE space, D from the data)
    starts: torch.Tensor  # (B, E) long: first text token the entity covers
    ends: torch.Tensor  # (B, E) long: one past the last covered token (half-open span)
    mask: torch.Tensor  # (B, E) bool: True for a real entity, False for padding

    def __post_init__(self) -> None:
        b, e = self.mask.shape
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
        )

    def index_select(self, index: torch.Tensor) -> KnowledgeInputs:
        """Rows picked (or repeated) by ``index``, e.g. to repeat each prompt per sample."""
        return KnowledgeInputs(
            self.vectors[index], self.starts[index], self.ends[index], self.mask[index]
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
