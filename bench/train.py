"""Stage-2 training throughput on CPU: GPT steps on cached image codes against encoding every batch.

Both paths run the same optimizer step on the same model and the same batches, in one process:

* cached — the image codes were computed once beforehand (``VQGAN.encode`` over the data set);
  each step is GPT forward + backward + gradient clipping + AdamW on (text ids, codes);
* encode — the original's way: each step first encodes the batch's images through the VQGAN
  under ``torch.no_grad`` and then takes the same GPT step.

Steps alternate (cached, encode, cached, encode, ...) so both see the same machine load; the
figure is image tokens trained per second (batch × img_len / step time), median over the steps
after one warm-up step of each. Weights and images are random: the cost does not depend on them.
On a machine whose cores are shared with other jobs, prefer ``--threads 1`` (see bench/generation.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from easynlp_artist.models.stage1.vqgan import VQGAN
from easynlp_artist.models.stage2.gpt import ArtistGPT

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/common.py
from common import (  # noqa: E402,I001
    add_shape_args, available_cores, build_config, cpu_name, fill_shape_defaults, load_average,
)


class Stage2Step:
    """One optimizer step of the GPT: forward, backward, gradient clipping, AdamW."""

    def __init__(self, gpt: ArtistGPT, lr: float, weight_decay: float, max_grad_norm: float) -> None:
        self.gpt = gpt.train()
        self.optimizer = torch.optim.AdamW(gpt.parameters(), lr=lr, weight_decay=weight_decay)
        self.max_grad_norm = max_grad_norm

    def __call__(self, text_ids: torch.Tensor, codes: torch.Tensor) -> float:
        loss = self.gpt(text_ids, codes)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.gpt.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def encode(vqgan: VQGAN, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vqgan.encode(images)


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads or available_cores())
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    config = build_config(args)
    gcfg, vcfg = config.gpt, config.vqgan
    vqgan = VQGAN(vcfg).eval()
    step = Stage2Step(ArtistGPT(gcfg), args.lr, args.weight_decay, args.max_grad_norm)
    wait = os.environ.get("OMP_WAIT_POLICY", "default")
    print(f"machine: {cpu_name()}, {available_cores()} cores available, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads (OMP_WAIT_POLICY {wait}), load average {load_average()}")
    print(f"shape: GPT {gcfg.n_layer} layers x {gcfg.n_embd} wide, {gcfg.n_head} heads, "
          f"{gcfg.text_len} text + {gcfg.img_len} image tokens; VQGAN {vcfg.resolution} px, "
          f"f{vcfg.downsample_factor}, {vcfg.n_embed} codes, ch {vcfg.ch} x {vcfg.ch_mult}; "
          f"batch {args.batch}; AdamW, grad clip {args.max_grad_norm}")

    n = args.steps + 1  # one warm-up step per path
    side = vcfg.resolution
    images = [torch.rand(args.batch, 3, side, side, generator=gen) * 2 - 1 for _ in range(n)]
    texts = [torch.randint(1, gcfg.text_vocab_size, (args.batch, gcfg.text_len), generator=gen)
             for _ in range(n)]
    encode(vqgan, images[0][:1])  # warm-up (kernel selection, allocator)
    t = time.perf_counter()
    codes = [encode(vqgan, x) for x in images]  # the one-off pass that builds the code cache
    t_precompute = time.perf_counter() - t

    cached, encoded, encode_only = [], [], []
    for i in range(n):
        t0 = time.perf_counter()
        step(texts[i], codes[i])
        t1 = time.perf_counter()
        fresh = encode(vqgan, images[i])
        t2 = time.perf_counter()
        step(texts[i], fresh)
        t3 = time.perf_counter()
        if i:
            cached.append(t1 - t0)
            encoded.append(t3 - t1)
            encode_only.append(t2 - t1)

    tokens = args.batch * gcfg.img_len
    t_cached, t_encoded = statistics.median(cached), statistics.median(encoded)
    ratios = [e / c for c, e in zip(cached, encoded)]
    print(f"code cache: {n * args.batch} images encoded once in {t_precompute:.1f} s "
          f"({n * args.batch / t_precompute:.2f} img/s)")
    print(f"cached codes: {tokens / t_cached:.1f} image tokens/s ({t_cached:.2f} s/step, "
          f"median of {len(cached)})")
    print(f"encode each batch: {tokens / t_encoded:.1f} image tokens/s ({t_encoded:.2f} s/step, "
          f"of which VQGAN encode {statistics.median(encode_only):.2f} s)")
    print(f"ratio {t_encoded / t_cached:.2f}x (median of per-step-pair ratios "
          f"{statistics.median(ratios):.2f}x, range {min(ratios):.2f}-{max(ratios):.2f}x)")
    print(f"load average at the end: {load_average()}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_args(p)
    p.add_argument("--batch", type=int)
    p.add_argument("--steps", type=int, help="timed steps per path (after one warm-up step each)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--threads", type=int, help="default: the cores available to this process")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    fill_shape_defaults(args, base=dict(batch=4, steps=5), quick=dict(batch=4, steps=3))
    return args


if __name__ == "__main__":
    run(parse_args())
