"""The image decoder (VQGAN) in float32 against bfloat16 (``vqgan_dtype=bfloat16``), side by side.

    python bench/vqgan.py [--quick] [--threads 1] [--repeats 3]

Two models, each decoded both ways in one process under the same load:

* the ARTIST-base VQGAN shape (256 px, f16, 16384 codes) with random weights, one image per call
  (the library decodes images one by one on CPU), codes drawn uniformly;
* the embedded model ``artist-shapes-tiny-zh`` (trained weights), the codes of a batch of images it
  sampled for real prompts, decoded as the pipeline decodes them.

Reported: seconds per image (best of ``--repeats``), the bfloat16 speed-up, and the PSNR of the
bfloat16 images against the float32 ones (uint8 pixels, as written to files; higher is closer).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_shape_args, build_config, cpu_name, fill_shape_defaults, load_average  # noqa: E402,I001
from generation import isa_flags  # noqa: E402

from easynlp_artist.models.stage1.vqgan import VQGAN, images_to_uint8  # noqa: E402
from easynlp_artist.pipeline import ArtistPipeline  # noqa: E402

PROMPTS = ["一个红色的圆形", "白色背景上的番茄", "蓝色的星形在黑色背景上", "一个海王星", "画一个黄色三角形",
           "一个绿色的正方形", "紫色的葡萄", "一个橙色的篮球"]


def best_seconds(fn, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up (kernel selection, folded weights)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


@torch.no_grad()
def compare(name: str, vqgan: VQGAN, codes: torch.Tensor, repeats: int) -> None:
    half = copy.deepcopy(vqgan).to(torch.bfloat16)
    t32, img32 = best_seconds(lambda: vqgan.decode(codes), repeats)
    t16, img16 = best_seconds(lambda: half.decode(codes), repeats)
    n = codes.shape[0]
    p = psnr(images_to_uint8(img16.float()).numpy(), images_to_uint8(img32).numpy())
    print(f"| {name} | {n} | {1000 * t32 / n:.1f} | {1000 * t16 / n:.1f} | {t32 / t16:.2f}x | {p:.1f} dB |", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shape_args(p)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=2, help="images decoded per timing at the base shape")
    args = p.parse_args(argv)
    fill_shape_defaults(args)
    torch.set_num_threads(args.threads)
    print(f"cpu: {cpu_name()}; isa: {isa_flags()}; torch {torch.__version__}; threads {args.threads}; "
          f"load average {load_average()}")
    print()
    print("| model | images | float32 ms/image | bfloat16 ms/image | speed-up | PSNR bf16 vs fp32 |")
    print("|---|---|---|---|---|---|")
    cfg = build_config(args).vqgan
    torch.manual_seed(0)
    vq = VQGAN(cfg).eval()
    side = cfg.resolution // cfg.downsample_factor
    codes = torch.randint(0, cfg.n_embed, (args.images, side * side), generator=torch.Generator().manual_seed(0))
    compare(f"VQGAN {cfg.resolution} px, f{cfg.downsample_factor}, {cfg.n_embed} codes (random weights)", vq, codes,
            args.repeats)
    pipe = ArtistPipeline.from_pretrained("artist-shapes-tiny-zh")
    pipe.set_progress_bar_config(disable=True)
    sampled = pipe(PROMPTS, generator=torch.Generator().manual_seed(0)).codes
    compare("artist-shapes-tiny-zh (trained, sampled codes)", pipe.model.vqgan, sampled, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
