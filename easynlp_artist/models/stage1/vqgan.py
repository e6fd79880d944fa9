"""Stage 1 of ARTIST: the VQGAN image tokenizer (taming-transformers f16 design on diffusers' VQModel).

An image (B, 3, H, W) in [-1, 1] is encoded to a grid of ``embed_dim`` vectors, each replaced by its
nearest codebook entry; the image becomes ``(H / f) * (W / f)`` discrete tokens in row-major grid
order (the order of taming's ``flatten`` over (h, w)). The decoder maps a token grid back to an image.

The network is diffusers' ``VQModel`` configured to match taming's layout exactly, so taming / EasyNLP
weights load after a key rename and can be written back in the original layout (both in
``stage1/convert.py``). Quantisation is done here, not by diffusers,
so that the codebook loss uses ``VQGANConfig.beta`` with taming's convention (see :meth:`VQGAN.quantize`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import VQModel

from easynlp_artist.models.derived import DerivedWeight
from easynlp_artist.models.fields import from_dict


@dataclass
class VQGANConfig:
    """Hyper-parameters in taming's names; the defaults are the released ARTIST / taming f16 model."""

    resolution: int = 256
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 16384
    beta: float = 0.25
    norm_groups: int = 32

    def __post_init__(self) -> None:
        self.ch_mult = tuple(self.ch_mult)
        self.attn_resolutions = tuple(self.attn_resolutions)
        positive = ("resolution", "in_channels", "out_channels", "ch", "num_res_blocks", "z_channels",
                    "embed_dim", "n_embed", "norm_groups")
        bad = [f"{name}={getattr(self, name)!r}" for name in positive
               if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0]
        if bad:
            raise ValueError(f"VQGANConfig fields must be positive integers: {', '.join(bad)}")
        if not self.ch_mult or any(not isinstance(m, int) or m <= 0 for m in self.ch_mult):
            raise ValueError(f"VQGANConfig.ch_mult must be a non-empty tuple of positive ints, got {self.ch_mult}")
        if self.beta < 0:
            raise ValueError(f"VQGANConfig.beta must be >= 0, got {self.beta}")
        if self.resolution % self.downsample_factor:
            raise ValueError(
                f"VQGANConfig.resolution={self.resolution} is not divisible by the downsample factor "
                f"{self.downsample_factor} (2 ** (len(ch_mult) - 1), ch_mult={self.ch_mult})"
            )
        indivisible = sorted({c for c in self.block_out_channels if c % self.norm_groups})
        if indivisible:
            raise ValueError(
                f"VQGANConfig.norm_groups={self.norm_groups} must divide every ch * ch_mult channel count; "
                f"it does not divide {indivisible}"
            )
        missing = [r for r in self.attn_resolutions if r not in self.level_resolutions]
        if missing:
            raise ValueError(
                f"VQGANConfig.attn_resolutions {missing} are not level resolutions {self.level_resolutions} "
                f"(resolution={self.resolution}, ch_mult={self.ch_mult})"
            )

    @property
    def num_levels(self) -> int:
        return len(self.ch_mult)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (self.num_levels - 1)

    @property
    def grid_size(self) -> int:
        return self.resolution // self.downsample_factor

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.ch * m for m in self.ch_mult)

    @property
    def level_resolutions(self) -> tuple[int, ...]:
        """Feature-map side length at each encoder level (level 0 = full resolution)."""
        return tuple(self.resolution // 2**i for i in range(self.num_levels))

    def level_has_attention(self, level: int) -> bool:
        return self.level_resolutions[level] in self.attn_resolutions

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VQGANConfig:
        return from_dict(cls, data, "VQGANConfig")


def _diffusers_kwargs(config: VQGANConfig) -> dict[str, Any]:
    levels = range(config.num_levels)
    down = tuple("AttnDownEncoderBlock2D" if config.level_has_attention(i) else "DownEncoderBlock2D"
                 for i in levels)
    # diffusers' decoder up_blocks run from the lowest resolution (last level) to the highest.
    up = tuple("AttnUpDecoderBlock2D" if config.level_has_attention(i) else "UpDecoderBlock2D"
               for i in reversed(levels))
    return dict(
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.num_res_blocks,
        act_fn="silu",
        latent_channels=config.z_channels,
        sample_size=config.resolution,
        num_vq_embeddings=config.n_embed,
        norm_num_groups=config.norm_groups,
        vq_embed_dim=config.embed_dim,
        norm_type="group",
        mid_block_add_attention=True,
    )


def build_vq_model(config: VQGANConfig) -> VQModel:
    """The diffusers ``VQModel`` with taming's architecture for ``config``; the decoder's upsamplers
    are :class:`SubpixelUpsample` (same weights and keys, fewer FLOPs)."""
    model = VQModel(**_diffusers_kwargs(config))
    model.quantize.beta = config.beta
    for block in model.decoder.up_blocks:
        if block.upsamplers is not None:
            block.upsamplers = nn.ModuleList(SubpixelUpsample(up.conv) for up in block.upsamplers)
    return model


# Output pixel (2i + a, 2j + b) of the upsampled map, for each of the four phases (a, b).
_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


class SubpixelUpsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution (taming's ``Upsample`` with
    ``with_conv``), computed without making the upsampled map.

    Along one axis, output row ``2i`` sees input rows ``i-1, i, i`` through the kernel rows
    ``w0, w1, w2``, and output row ``2i+1`` sees rows ``i, i, i+1``: each output phase is a 2-tap
    filter on the small map (``[w0, w1 + w2]`` and ``[w0 + w1, w2]``). In 2-D, the four phases
    (a, b) are 2x2 convolutions of the input, so the layer costs 16 instead of 36 multiply-adds per
    input pixel and channel pair and never materialises the 4x larger upsampled input. The weights
    are the original 3x3 ``conv`` (state-dict keys unchanged); results equal upsample-then-convolve
    up to floating-point rounding.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1):
            raise ValueError(f"SubpixelUpsample needs a 3x3 convolution with padding 1, got {conv}")
        self.conv = conv
        self._folded = DerivedWeight()

    def phase_weights(self) -> torch.Tensor:
        """(O, I, 3, 3) kernel -> (4, O, I, 2, 2), one 2x2 kernel per phase in :data:`_PHASES` order.

        Kept between calls when no gradient is needed; remade when the weight changes (new storage
        or dtype, or an in-place update, which bumps the version counter)."""
        w = self.conv.weight
        if torch.is_grad_enabled() and w.requires_grad:
            return _fold_phases(w)
        return self._folded.get(w, _fold_phases)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W) -> (B, O, 2H, 2W)
        B, _, H, W = x.shape
        weights = self.phase_weights()
        padded = F.pad(x, (1, 1, 1, 1))  # (B, C, H+2, W+2): input row r is padded row r+1
        # keep the input's layout: after the mid-block attention the decoder runs channels-last
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.empty(B, self.conv.out_channels, 2 * H, 2 * W, dtype=x.dtype, device=x.device,
                          memory_format=layout)
        for (a, b), w in zip(_PHASES, weights):
            # phase a reads input rows i-1+a, i+a = padded rows i+a, i+a+1 for i in 0..H-1
            window = padded[:, :, a : a + H + 1, b : b + W + 1]
            out[:, :, a::2, b::2] = F.conv2d(window, w, self.conv.bias)
        return out


def _fold_phases(w: torch.Tensor) -> torch.Tensor:
    """(O, I, 3, 3) -> (4, O, I, 2, 2): the 2x2 kernels of the four output phases (see SubpixelUpsample)."""

    def fold(t: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        w0, w1, w2 = t.unbind(dim)
        return torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)

    rows = fold(w, 2)
    return torch.stack([fold(rows[a], 3)[b] for a, b in _PHASES])


class VQGAN(nn.Module):
    """Image tokenizer: images (B, C, H, W) in [-1, 1] <-> codes (B, h * w) long, row-major grid.

    ``self.vq_model`` is the diffusers ``VQModel``; this module's state-dict keys are therefore
    ``vq_model.`` + diffusers keys; ``stage1/convert.py`` reads and writes the taming / EasyNLP layout.
    """

    def __init__(self, config: VQGANConfig | None = None):
        super().__init__()
        self.config = config if config is not None else VQGANConfig()
        self.vq_model = build_vq_model(self.config)

    @property
    def codebook(self) -> torch.Tensor:
        return self.vq_model.quantize.embedding.weight  # (n_embed, embed_dim)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output convolution weight (where taming balances the adversarial loss)."""
        return self.vq_model.decoder.conv_out.weight

    # ---- validation -------------------------------------------------------------------------------

    def _check_images(self, images: torch.Tensor) -> None:
        if not torch.is_tensor(images) or images.dim() != 4 or not images.is_floating_point():
            raise ValueError(f"images must be a float tensor (B, C, H, W), got {_describe(images)}")
        _, c, h, w = images.shape
        f = self.config.downsample_factor
        if c != self.config.in_channels:
            raise ValueError(f"images have {c} channels, config.in_channels is {self.config.in_channels}")
        if h % f or w % f or h == 0 or w == 0:
            raise ValueError(f"image height and width must be positive multiples of {f}, got {h}x{w}")

    def check_codes(self, codes: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``codes`` is an integer tensor with values in [0, n_embed)."""
        integer = torch.is_tensor(codes) and not (
            codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool
        )
        if not integer:
            raise ValueError(f"codes must be an integer tensor, got {_describe(codes)}")
        if codes.numel() == 0:
            return
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.config.n_embed:
            raise ValueError(
                f"codes must lie in [0, n_embed={self.config.n_embed}), got values in [{lo}, {hi}]"
            )

    # ---- the pieces -------------------------------------------------------------------------------

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> pre-quantisation latents (B, embed_dim, H / f, W / f)."""
        self._check_images(images)
        return self.vq_model.encode(images).latents

    def quantize(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Nearest-codebook quantisation with the straight-through estimator.

        latents (B, D, h, w) -> (quantized (B, D, h, w), codebook_loss (), codes (B, h * w)).
        The loss follows taming's (legacy) convention:
        ``mean((sg[z_q] - z)^2) + beta * mean((z_q - sg[z])^2)``, i.e. ``beta`` weights the codebook
        term and the commitment term has weight 1; in value it equals ``(1 + beta) * mse(z_q, z)``.
        """
        if latents.dim() != 4 or latents.shape[1] != self.config.embed_dim:
            raise ValueError(
                f"latents must be (B, embed_dim={self.config.embed_dim}, h, w), got {_describe(latents)}"
            )
        b, d, h, w = latents.shape
        flat = latents.permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, D)
        codebook = self.codebook
        codes = nearest_codes(flat, codebook)  # (B*h*w,)
        quantized = F.embedding(codes, codebook)  # (B*h*w, D)
        loss = F.mse_loss(quantized.detach(), flat) + self.config.beta * F.mse_loss(quantized, flat.detach())
        quantized = flat + (quantized - flat).detach()
        quantized = quantized.view(b, h, w, d).permute(0, 3, 1, 2).contiguous()
        return quantized, loss, codes.view(b, h * w)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, num_tokens) or (B, h, w) -> codebook vectors (B, embed_dim, h, w)."""
        self.check_codes(codes)
        if codes.dim() == 2 and codes.shape[1] == self.config.num_tokens:
            codes = codes.view(codes.shape[0], self.config.grid_size, self.config.grid_size)
        elif codes.dim() != 3:
            raise ValueError(
                f"codes must be (B, num_tokens={self.config.num_tokens}) or a grid (B, h, w), "
                f"got shape {tuple(codes.shape)}"
            )
        return F.embedding(codes.long(), self.codebook).permute(0, 3, 1, 2).contiguous()

    def decode_latents(self, quantized: torch.Tensor) -> torch.Tensor:
        """Quantised latents (B, embed_dim, h, w) -> images (B, out_channels, h * f, w * f), unclamped."""
        hidden = self.vq_model.post_quant_conv(quantized)
        return self.vq_model.decoder(hidden)

    # ---- public API -------------------------------------------------------------------------------

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> codes (B, (H / f) * (W / f)) long, row-major grid order."""
        _, _, codes = self.quantize(self.encode_latents(images))
        return codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, num_tokens) or (B, h, w) -> images (B, out_channels, H, W), nominally in [-1, 1].

        No clamping is applied; see :meth:`decode_to_uint8` for displayable pixels. On CPU the images
        are decoded one per decoder call. At 256 px that is also the fastest way (the feature maps of
        one image stay in the caches; figures in bench/README.md), and it makes each image's pixels
        independent of which other images share the batch: oneDNN picks its kernels by batch size,
        and their rounding differs, so a sharded or resumed predict run would otherwise not reproduce
        a single run exactly. Small images decode faster in batches; :meth:`decode_latents` decodes a
        batch in one call.
        """
        quantized = self.embed_codes(codes)
        if quantized.device.type != "cpu" or quantized.shape[0] <= 1:
            return self.decode_latents(quantized)
        return torch.cat([self.decode_latents(q) for q in quantized.split(1)])

    @torch.no_grad()
    def decode_to_uint8(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes -> (B, H, W, C) uint8 pixels, via :func:`images_to_uint8`."""
        return images_to_uint8(self.decode(codes))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: images -> (reconstruction (B, C, H, W), codebook_loss (), codes (B, h * w))."""
        quantized, codebook_loss, codes = self.quantize(self.encode_latents(images))
        return self.decode_latents(quantized), codebook_loss, codes

    def codebook_usage(self, codes: torch.Tensor) -> float:
        """Fraction of the ``n_embed`` codebook entries that occur in ``codes``."""
        self.check_codes(codes)
        return torch.unique(codes).numel() / self.config.n_embed


# Upper bound on the elements of one (rows, n_embed) distance block, to bound memory for large batches.
DISTANCE_BLOCK_ELEMENTS = 2**24


@torch.no_grad()
def nearest_codes(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest (squared Euclidean) codebook row for each vector: (N, D), (K, D) -> (N,) long."""
    rows = max(1, DISTANCE_BLOCK_ELEMENTS // codebook.shape[0])
    codebook_sq = codebook.pow(2).sum(1)  # (K,)
    codes = [
        (block.pow(2).sum(1, keepdim=True) - 2 * block @ codebook.t() + codebook_sq).argmin(dim=1)
        for block in vectors.split(rows)
    ]
    return torch.cat(codes) if codes else vectors.new_zeros(0, dtype=torch.long)


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C); values outside are clamped."""
    pixels = ((images.detach().clamp(-1, 1) + 1) * 127.5).round()
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _describe(x: Any) -> str:
    if torch.is_tensor(x):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
