"""What the benchmark scripts share: machine facts, the model-shape flags and the model config."""

from __future__ import annotations

import argparse
import os
import platform

from easynlp_artist.configuration import ArtistConfig
from easynlp_artist.models.stage1.vqgan import VQGANConfig
from easynlp_artist.runtime import available_cores  # noqa: F401 - the benchmarks take it from here

# ARTIST-base (the release) and a small shape for a fast check
BASE_SHAPE = dict(n_layer=12, n_head=12, n_embd=768, text_len=32, resolution=256, vq_ch=128,
                  vq_ch_mult=[1, 1, 2, 2, 4], vq_embed_dim=256, codes=16384)
QUICK_SHAPE = dict(n_layer=2, n_head=4, n_embd=128, text_len=8, resolution=64, vq_ch=32,
                   vq_ch_mult=[1, 2, 2, 4], vq_embed_dim=64, codes=1024)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def add_shape_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="small shape for a fast check (flags below still apply)")
    p.add_argument("--n-layer", type=int)
    p.add_argument("--n-head", type=int)
    p.add_argument("--n-embd", type=int)
    p.add_argument("--text-len", type=int)
    p.add_argument("--resolution", type=int, help="VQGAN image side in pixels")
    p.add_argument("--vq-ch", type=int, help="VQGAN base channels")
    p.add_argument("--vq-ch-mult", type=int, nargs="+",
                   help="VQGAN channel multipliers (f = 2 ** (levels - 1))")
    p.add_argument("--vq-embed-dim", type=int, help="VQGAN latent and code width")
    p.add_argument("--codes", type=int, help="VQGAN codebook size")


def fill_shape_defaults(args: argparse.Namespace, base: dict | None = None, quick: dict | None = None) -> None:
    """Flags left unset take the base (or --quick) shape; ``base``/``quick`` add script-specific ones."""
    defaults = {**QUICK_SHAPE, **(quick or {})} if args.quick else {**BASE_SHAPE, **(base or {})}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def build_config(args: argparse.Namespace) -> ArtistConfig:
    vqgan = VQGANConfig(
        resolution=args.resolution, ch=args.vq_ch, ch_mult=tuple(args.vq_ch_mult),
        attn_resolutions=(args.resolution // 2 ** (len(args.vq_ch_mult) - 1),),
        z_channels=args.vq_embed_dim, embed_dim=args.vq_embed_dim, n_embed=args.codes,
        norm_groups=min(32, args.vq_ch),
    )
    return ArtistConfig.build(vqgan, text_len=args.text_len, n_layer=args.n_layer, n_head=args.n_head,
                              n_embd=args.n_embd)
