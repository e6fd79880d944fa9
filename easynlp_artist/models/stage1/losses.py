"""VQGAN training objective: reconstruction + codebook/commitment loss + an optional patch discriminator.

Generator loss (what the VQGAN back-propagates)::

    loss = rec_weight * rec + codebook_weight * codebook + disc_factor * lambda * g_adv

- ``rec``: mean absolute (``"l1"``, default) or squared (``"l2"``) pixel error.
- ``codebook``: from :meth:`VQGAN.quantize`, taming's convention, ``beta`` from ``VQGANConfig``.
- ``g_adv = -mean(D(reconstruction))``; ``lambda`` is either the fixed ``disc_weight`` or, with
  ``adaptive_disc_weight`` (taming's rule), ``disc_weight * |grad rec| / (|grad g_adv| + 1e-4)``
  with both gradients taken at the decoder's last layer, clamped to [0, 1e4] and detached.

Discriminator loss: hinge ``0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x_rec))))`` (or
``"vanilla"``, the softplus form), times ``disc_factor``. The adversarial terms are switched on only
from step ``disc_start`` on; before that the discriminator is not run and both terms are exactly 0.

Not included: the LPIPS perceptual term of taming's ``VQLPIPSWithDiscriminator``. It needs
pretrained VGG weights (and torchvision), which this project does not ship; the loss here is the
taming loss with ``perceptual_weight = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .vqgan import VQGAN

REC_LOSSES = ("l1", "l2")
DISC_LOSSES = ("hinge", "vanilla")
MAX_ADAPTIVE_WEIGHT = 1e4


@dataclass
class VQGANLossConfig:
    rec_loss: str = "l1"
    rec_weight: float = 1.0
    codebook_weight: float = 1.0
    disc_start: int = 10_000  # first step (0-based) at which the discriminator is used
    disc_weight: float = 0.8
    disc_factor: float = 1.0
    adaptive_disc_weight: bool = True
    disc_loss: str = "hinge"
    disc_ndf: int = 64
    disc_layers: int = 3

    def __post_init__(self) -> None:
        if self.rec_loss not in REC_LOSSES:
            raise ValueError(f"VQGANLossConfig.rec_loss must be one of {REC_LOSSES}, got {self.rec_loss!r}")
        if self.disc_loss not in DISC_LOSSES:
            raise ValueError(f"VQGANLossConfig.disc_loss must be one of {DISC_LOSSES}, got {self.disc_loss!r}")
        negative = [f"{name}={getattr(self, name)}"
                    for name in ("rec_weight", "codebook_weight", "disc_start", "disc_weight", "disc_factor")
                    if getattr(self, name) < 0]
        if negative:
            raise ValueError(f"VQGANLossConfig fields must be >= 0: {', '.join(negative)}")
        if self.disc_ndf <= 0 or self.disc_layers <= 0:
            raise ValueError(
                f"VQGANLossConfig.disc_ndf and disc_layers must be positive, got {self.disc_ndf}, {self.disc_layers}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VQGANLossConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown VQGANLossConfig keys: {unknown}; known keys: {sorted(known)}")
        return cls(**data)


class PatchDiscriminator(nn.Module):
    """PatchGAN-style discriminator: images (B, C, H, W) -> real/fake logits per patch (B, 1, h, w).

    ``n_layers`` stride-2 4x4 convolutions (width ``ndf``, doubling up to ``8 * ndf``), one stride-1
    convolution, and a 1-channel stride-1 output convolution. GroupNorm is used instead of taming's
    BatchNorm, so the output of an image does not depend on the rest of the batch (and no
    batch-statistics synchronisation is needed across processes).
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        if in_channels <= 0 or ndf <= 0 or n_layers <= 0:
            raise ValueError(
                f"PatchDiscriminator in_channels, ndf, n_layers must be positive, got {in_channels}, {ndf}, {n_layers}"
            )
        self.n_layers = n_layers
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = ndf
        for n in range(1, n_layers + 1):
            out = ndf * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(channels, out, 4, stride=stride, padding=1, bias=False),
                       nn.GroupNorm(math.gcd(32, out), out), nn.LeakyReLU(0.2)]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        self.apply(_init_weights)

    @property
    def min_input_size(self) -> int:
        """Smallest image side giving a non-empty logit map (each stride-1 4x4 conv removes one)."""
        return 3 * 2**self.n_layers

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if min(images.shape[-2:]) < self.min_input_size:
            raise ValueError(
                f"PatchDiscriminator with n_layers={self.n_layers} needs images of at least "
                f"{self.min_input_size}x{self.min_input_size}, got {tuple(images.shape[-2:])}"
            )
        return self.net(images)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.GroupNorm):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build_discriminator(loss_cfg: VQGANLossConfig, in_channels: int = 3) -> PatchDiscriminator:
    return PatchDiscriminator(in_channels, loss_cfg.disc_ndf, loss_cfg.disc_layers)


def reconstruction_loss(images: torch.Tensor, reconstruction: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    if kind == "l1":
        return F.l1_loss(reconstruction, images)
    if kind == "l2":
        return F.mse_loss(reconstruction, images)
    raise ValueError(f"reconstruction loss kind must be one of {REC_LOSSES}, got {kind!r}")


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
    if kind == "vanilla":
        return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())
    raise ValueError(f"discriminator loss kind must be one of {DISC_LOSSES}, got {kind!r}")


def adaptive_weight(rec_loss: torch.Tensor, g_adv: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """taming's balance: |d rec / d last_layer| / (|d g_adv / d last_layer| + 1e-4), clamped, detached."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(g_adv, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0.0, MAX_ADAPTIVE_WEIGHT).detach()


@contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Gradients flow through ``module`` to its input but are not accumulated in its parameters."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def vqgan_training_step(
    model: VQGAN,
    discriminator: nn.Module | None,
    images: torch.Tensor,
    step: int,
    loss_cfg: VQGANLossConfig,
) -> dict[str, Any]:
    """One forward pass of VQGAN training; the caller does the backward passes and optimiser steps.

    Returns a dict with
    - ``"loss"``: generator loss tensor, ``backward()`` it and step the VQGAN optimiser (the
      discriminator's parameters receive no gradient from it);
    - ``"d_loss"``: discriminator loss tensor; back-propagate it only when ``"disc_active"`` is True
      (before ``disc_start``, or with no discriminator, it is a constant 0 without a graph);
    - floats for logging: ``"rec"``, ``"codebook"``, ``"g_adv"``, ``"d"``, ``"disc_weight"``
      (the lambda used, 0 when inactive), ``"codebook_usage"``; and ``"disc_active"`` (bool);
    - ``"latents"`` (B, embed_dim, h, w) and ``"codes"`` (B, h * w), detached, for
      :class:`DeadCodeRestarter`.

    Outside autograd (``torch.no_grad()``, e.g. validation) the adaptive weight cannot be computed
    and the fixed ``disc_weight`` is used.
    """
    latents = model.encode_latents(images)
    quantized, codebook_loss, codes = model.quantize(latents)
    reconstruction = model.decode_latents(quantized)
    rec = reconstruction_loss(images, reconstruction, loss_cfg.rec_loss)
    nll = loss_cfg.rec_weight * rec
    loss = nll + loss_cfg.codebook_weight * codebook_loss
    zero = reconstruction.new_zeros(())
    g_adv, d_loss, weight = zero, zero, 0.0
    active = discriminator is not None and loss_cfg.disc_factor > 0 and step >= loss_cfg.disc_start
    if active:
        with _frozen(discriminator):
            g_adv = -discriminator(reconstruction).mean()
        if loss_cfg.adaptive_disc_weight and torch.is_grad_enabled() and nll.requires_grad:
            weight = loss_cfg.disc_weight * float(adaptive_weight(nll, g_adv, model.last_layer))
        else:
            weight = loss_cfg.disc_weight
        loss = loss + loss_cfg.disc_factor * weight * g_adv
        logits_real = discriminator(images.detach())
        logits_fake = discriminator(reconstruction.detach())
        d_loss = loss_cfg.disc_factor * discriminator_loss(logits_real, logits_fake, loss_cfg.disc_loss)
    return {
        "loss": loss,
        "d_loss": d_loss,
        "rec": rec.item(),
        "codebook": codebook_loss.item(),
        "g_adv": g_adv.item(),
        "d": d_loss.item(),
        "disc_weight": weight,
        "codebook_usage": model.codebook_usage(codes),
        "disc_active": active,
        "latents": latents.detach(),
        "codes": codes,
    }


class DeadCodeRestarter(nn.Module):
    """Against codebook collapse: codes unused for ``every`` training steps restart on encoder outputs.

    Taming has no such remedy; small VQGANs trained from scratch often end up using a handful of
    codes. Every ``every`` calls of :meth:`update`, each code that was not chosen since the last
    check is moved onto a randomly picked latent vector of the current batch (plus a little noise
    so restarted codes differ). The usage counts are buffers, so a resumed run continues exactly.
    With a process group, counts are summed over ranks and rank 0's picks are broadcast, so every
    rank keeps the same codebook.
    """

    def __init__(self, n_embed: int, every: int) -> None:
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.register_buffer("counts", torch.zeros(n_embed, dtype=torch.long))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, codebook: torch.Tensor, latents: torch.Tensor, codes: torch.Tensor) -> int:
        """Count ``codes`` (B, N); every ``every`` calls restart the dead codes. Returns how many."""
        import torch.distributed as dist

        self.counts += torch.bincount(codes.flatten(), minlength=self.counts.numel()).to(self.counts.device)
        self.calls += 1
        if int(self.calls) % self.every:
            return 0
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if distributed:
            dist.all_reduce(self.counts)
        dead = (self.counts == 0).nonzero().flatten()
        self.counts.zero_()
        if len(dead) == 0:
            return 0
        flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])  # (B*h*w, D)
        picks = flat[torch.randint(0, flat.shape[0], (len(dead),), device=flat.device)]
        picks = picks + 0.01 * picks.std() * torch.randn_like(picks)
        if distributed:
            dist.broadcast(picks, src=0)
        codebook[dead.to(codebook.device)] = picks.to(codebook.dtype)
        return len(dead)
