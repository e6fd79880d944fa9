"""The stage-2 training objective: the GPT's image-token NLL on a batch of cached codes."""

from __future__ import annotations

import math

import torch
from torch import nn

from easynlp_artist.models.stage2.gpt import ArtistGPT


class Stage2Objective(nn.Module):
    """batch → mean NLL of the image tokens (the VQGAN is not part of it: codes are cached)."""

    def __init__(self, gpt: ArtistGPT) -> None:
        super().__init__()
        self.gpt = gpt

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        loss = self.gpt(batch["text_ids"], batch["image_ids"], batch["knowledge"])
        return loss, {"perplexity": math.exp(min(loss.item(), 50.0))}

    def no_weight_decay(self) -> set[str]:
        return {f"gpt.{n}" for n in self.gpt.no_weight_decay()}
