"""The stage-1 training objective: VQGAN reconstruction + codebook loss + a patch discriminator."""

from __future__ import annotations

import torch
from torch import nn

from easynlp_artist.models.stage1.losses import (
    DeadCodeRestarter,
    VQGANLossConfig,
    build_discriminator,
    vqgan_training_step,
)
from easynlp_artist.models.stage1.vqgan import VQGAN


class Stage1Objective(nn.Module):
    """VQGAN + patch discriminator trained by one optimizer.

    The generator loss reaches only the VQGAN (the discriminator is frozen while it is computed) and
    the discriminator loss only the discriminator (it sees detached reconstructions), so their sum
    can be minimised with a single AdamW. ``micro_steps`` counts training batches (kept in the
    checkpoint) so the discriminator starts after ``disc_start`` optimizer steps, also on resume.
    """

    def __init__(self, vqgan: VQGAN, loss_cfg: VQGANLossConfig, accumulation: int, restart_every: int = 0) -> None:
        super().__init__()
        self.vqgan = vqgan
        self.discriminator = build_discriminator(loss_cfg, vqgan.config.in_channels)
        self.loss_cfg = loss_cfg
        self.accumulation = accumulation
        self.restarter = DeadCodeRestarter(vqgan.config.n_embed, restart_every) if restart_every else None
        self.register_buffer("micro_steps", torch.zeros((), dtype=torch.long))

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        step = int(self.micro_steps) // self.accumulation
        out = vqgan_training_step(self.vqgan, self.discriminator, batch["images"], step, self.loss_cfg)
        if self.training:
            self.micro_steps += 1
            if self.restarter is not None:
                # runs before this step's update; the straight-through graph is already built
                self.restarter.update(self.vqgan.codebook.data, out["latents"], out["codes"])
        loss = out["loss"] + (out["d_loss"] if out["disc_active"] else 0.0)
        logs = {k: float(out[k]) for k in ("rec", "codebook", "g_adv", "d", "codebook_usage")}
        return loss, logs
