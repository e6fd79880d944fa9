"""Text-to-image generation throughput on CPU: the KV-cache sampler against the full-recompute one.

Measures, in one process and under the same load:

* images/s end to end (image-token sampling + VQGAN decode) at each ``--batches`` size, for
  ``ArtistModel.generate`` (KV cache) and for the original algorithm, the full-recompute sampler
  (``sample_image_tokens(..., use_cache=False)``: the whole sequence is re-run for every new token)
  followed by the same VQGAN decode. The full recompute is timed twice: as released (logits at
  every position, :class:`ReleasedForward`) and leaner (the head on the last position only, the
  library's ``use_cache=False``);
* the same with classifier-free guidance (``guidance_scale > 1``, twice the GPT rows) at the
  largest batch, cached sampler only, and the process's peak RSS right after it;
* the GPT's cached decode rate in GFLOP/s at ``--decode-batch`` rows next to the machine's fp32
  matmul rate, measured between decode steps in the same loop.

The full-recompute sampler costs ~8 TFLOP per image at ARTIST-base, so by default it is timed over
``--window`` consecutive steps at ``--windows`` positions spread over the image, and the per-step
times are interpolated linearly over all steps (see ``full_recompute_seconds``); ``--full-batch1``
also runs it over every step at batch 1 to check that estimate. Weights are random: throughput
does not depend on their values.

On a machine whose cores are also busy with other jobs, use ``--threads 1`` (or set
``OMP_WAIT_POLICY=PASSIVE``): otherwise every OpenMP parallel region waits for a descheduled worker
thread, and the many small per-token operations of cached decoding become several times slower.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import os
import resource
import statistics
import sys
import time

import torch

from easynlp_artist.modeling import ArtistModel
from easynlp_artist.models.stage2 import decoding
from easynlp_artist.models.stage2.gpt import ArtistGPT, GPTConfig
from easynlp_artist.models.stage2.sampling import SamplingConfig, sample_image_tokens
from easynlp_artist.runtime import tune_cpu_allocator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/common.py
from common import (  # noqa: E402,I001
    add_shape_args, available_cores, build_config, cpu_name, fill_shape_defaults, load_average,
)

MATMUL_SIZE = 2048


# ---- machine -------------------------------------------------------------------------------------


def describe_machine() -> str:
    load = load_average()
    wait = os.environ.get("OMP_WAIT_POLICY", "default")
    return (f"{cpu_name()}, {available_cores()} cores available, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads (OMP_WAIT_POLICY {wait}), load average {load}")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


class MatmulProbe:
    """Times a square fp32 matmul; samples are collected whenever ``sample`` is called."""

    def __init__(self, size: int = MATMUL_SIZE) -> None:
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(size, size, generator=g)
        self.b = torch.randn(size, size, generator=g)
        self.out = torch.empty(size, size)
        self.flop = 2 * size**3
        self.samples: list[float] = []

    def sample(self, reps: int = 1) -> None:
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(self.a, self.b, out=self.out)
            self.samples.append(self.flop / (time.perf_counter() - t) / 1e9)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


# ---- model ---------------------------------------------------------------------------------------


def decode_step_flop(cfg: GPTConfig, rows: int, keys: int) -> float:
    """Matmul FLOPs of one cached decode step (one new position per row attending to ``keys`` keys).

    Per layer: qkv 2·C·3C + output projection 2·C·C + MLP 2·C·4C·2 = 24·C², attention scores
    q·Kᵀ 2·keys·C and weighted values 2·keys·C; then the head 2·C·img_vocab. Layer norms, GELU,
    softmax, the embedding gather and sampling are not counted.
    """
    c = cfg.n_embd
    per_row = cfg.n_layer * (24 * c * c + 4 * keys * c) + 2 * c * cfg.img_vocab_size
    return rows * per_row


# ---- the two samplers ----------------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed(fn):
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


class ReleasedForward(ArtistGPT):
    """The per-step work of the released sampler (EasyNLP's ``generate``): minGPT's forward returns
    logits at every position of the sequence, and the sampler keeps the last. The library's own
    full recompute (``use_cache=False``) applies the head to the last position only, which saves
    2 * n_embd * img_vocab_size FLOPs per other position (~14 % at ARTIST-base)."""

    def prefill(self, text_ids, knowledge, cache, image_prefix=None):  # noqa: ANN001,ANN201
        if cache is not None:
            raise ValueError("ReleasedForward only models the full recompute")
        x = self.embed_text(text_ids, knowledge)  # (B, Tt, C)
        if image_prefix is not None and image_prefix.shape[1]:
            x = torch.cat([x, self.tok_emb(image_prefix)], dim=1)  # (B, T, C)
        # minGPT's forward, from the model's public modules
        x = self.drop(x + self.pos_emb[:, : x.shape[1]])
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))[:, -1]  # (B, T, V) logits, then the last position


def window_view(gpt: ArtistGPT, end: int, released: bool = False) -> ArtistGPT:
    """The same GPT (shared weights) whose image ends after ``end`` tokens, so that the library's
    sampler, given the first ``start`` codes as ``image_prefix``, runs exactly steps start..end-1.
    ``released``: with the released sampler's per-step work (:class:`ReleasedForward`)."""
    view = copy.copy(gpt)
    if released:
        view.__class__ = ReleasedForward  # same modules and weights, only prefill differs
    view.config = dataclasses.replace(gpt.config, img_len=end)
    return view


def window_starts(img_len: int, window: int, count: int) -> list[int]:
    last = img_len - window
    if count <= 1:
        return [last]
    return sorted({round(i * last / (count - 1)) for i in range(count)})


def full_recompute_seconds(model: ArtistModel, text: torch.Tensor, window: int, count: int,
                           generator: torch.Generator, released: bool = False) -> tuple[float, float, int]:
    """Time the full-recompute sampler over windows of steps; return (measured seconds, extrapolated
    seconds for all img_len steps, steps measured). ``released``: logits at every position, as the
    released sampler computed them (:class:`ReleasedForward`).

    Step i (sampling image token i) runs the whole sequence of text_len + i positions once. The
    per-step mean of each window is placed at the window's centre, interpolated linearly between
    centres (held flat beyond the first and last centre) and summed over every step.
    """
    img_len = model.config.gpt.img_len
    codes = torch.randint(0, model.config.gpt.img_vocab_size, (text.shape[0], img_len), generator=generator)
    centres, per_step, measured = [], [], 0.0
    for start in window_starts(img_len, min(window, img_len), count):
        end = min(start + window, img_len)
        prefix = codes[:, :start] if start else None
        seconds, _ = timed(lambda s=start, e=end, p=prefix: sample_image_tokens(
            window_view(model.gpt, e, released), text, image_prefix=p, use_cache=False, generator=generator))
        centres.append((start + end - 1) / 2)
        per_step.append(seconds / (end - start))
        measured += seconds
    total = sum(_interpolate(centres, per_step, i) for i in range(img_len))
    steps = sum(min(s + window, img_len) - s for s in window_starts(img_len, min(window, img_len), count))
    return measured, total, steps


def _interpolate(xs: list[float], ys: list[float], x: float) -> float:
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


# ---- measurements --------------------------------------------------------------------------------


def prompts(cfg: GPTConfig, batch: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(1, cfg.text_vocab_size, (batch, cfg.text_len), generator=generator)


def decode_gflops(model: ArtistModel, rows: int, probe: MatmulProbe, generator: torch.Generator,
                  probe_every: int) -> tuple[float, float, float]:
    """Run the GPT's cached decode over every image position at ``rows`` rows; matmul samples are
    taken every ``probe_every`` steps, outside the timed steps. Returns (GFLOP, seconds, GFLOP/s)."""
    cfg = model.config.gpt
    cache = decoding.new_cache(model.gpt, rows)
    model.gpt.prefill(prompts(cfg, rows, generator), None, cache)
    ids = torch.randint(0, cfg.img_vocab_size, (rows, 1), generator=generator)
    flop, seconds = 0.0, 0.0
    for i in range(cfg.img_len - 1):
        if i % probe_every == 0:
            probe.sample(2)
        keys = cache.length + 1
        dt, logits = timed(functools.partial(model.gpt.step, ids, cache))
        ids = logits.argmax(dim=-1, keepdim=True)
        seconds += dt
        flop += decode_step_flop(cfg, rows, keys)
    probe.sample(2)
    return flop / 1e9, seconds, flop / 1e9 / seconds


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads or available_cores())
    tuned = args.allocator == "tuned" and tune_cpu_allocator()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    config = build_config(args)
    gcfg = config.gpt
    model = ArtistModel(config).to(getattr(torch, args.dtype)).eval()
    probe = MatmulProbe(args.matmul_size)
    print(f"machine: {describe_machine()}; allocator: {'tuned (as the app)' if tuned else 'default'}")
    vq = config.vqgan
    print(f"shape: GPT {gcfg.n_layer} layers x {gcfg.n_embd} wide, {gcfg.n_head} heads, "
          f"{gcfg.text_len} text + {gcfg.img_len} image tokens; VQGAN {vq.resolution} px, "
          f"f{vq.downsample_factor}, {vq.n_embed} codes, ch {vq.ch} x {vq.ch_mult}; "
          f"random {args.dtype} weights")

    with torch.inference_mode():
        probe.sample(3)
        # warm-up: a couple of steps of each sampler and one decode (kernel selection, allocator)
        prefix = torch.randint(0, gcfg.img_vocab_size, (1, gcfg.img_len - 2), generator=gen)
        model.generate(prompts(gcfg, 1, gen), image_prefix=prefix, generator=gen)
        sample_image_tokens(model.gpt, prompts(gcfg, 1, gen), image_prefix=prefix, use_cache=False,
                            generator=gen)

        big = max(args.batches)
        # packed decoding weights are made by the first sampling call and kept on the model
        decoding.release_packed_weights(model.gpt)
        t_pack, cache = timed(lambda: decoding.new_cache(model.gpt, 2 * big))
        packed = bool(cache.packed)
        del cache
        guided = SamplingConfig(guidance_scale=args.guidance_scale)
        text = prompts(gcfg, big, gen)
        t_guided, _ = timed(lambda: model.generate(text, sampling=guided, generator=gen))
        rss = peak_rss_gb()
        probe.sample(3)
        progress(f"batch {big} guided: {t_guided:.1f} s, peak RSS {rss:.2f} GB")

        rows = []
        for batch in args.batches:
            text = prompts(gcfg, batch, gen)
            t_cached, (_, codes) = timed(lambda t=text: model.generate(t, generator=gen))
            probe.sample(3)
            t_decode, _ = timed(lambda c=codes: model.vqgan.decode(c))
            progress(f"batch {batch}: cached {t_cached:.1f} s, VQGAN decode {t_decode:.1f} s")
            fulls = {}
            for released in (True, False):
                measured, t_full, steps = full_recompute_seconds(model, text, args.window, args.windows, gen,
                                                                 released)
                probe.sample(3)
                fulls[released] = (measured, steps, t_full)
                progress(f"batch {batch}: full-recompute ({'released' if released else 'lean'}) windows "
                         f"{measured:.1f} s, extrapolated {t_full:.1f} s")
            rows.append((batch, t_cached, t_decode, fulls))

        check = None
        if args.full_batch1:
            text = prompts(gcfg, 1, gen)
            t_sampler, _ = timed(lambda: sample_image_tokens(model.gpt, text, use_cache=False, generator=gen))
            _, t_est, _ = full_recompute_seconds(model, text, args.window, args.windows, gen)
            check = (t_sampler, t_est)
            progress(f"full-recompute check: {t_sampler:.1f} s measured, {t_est:.1f} s extrapolated")

        gflop, t_dec, rate = decode_gflops(model, args.decode_batch, probe, gen, args.probe_every)

    n = args.matmul_size
    print(f"fp32 matmul {n}x{n}: median {probe.median:.1f} GFLOP/s, best {max(probe.samples):.1f}, "
          f"worst {min(probe.samples):.1f} ({len(probe.samples)} samples through the run)")
    for batch, t_cached, t_decode, fulls in rows:
        cached_ips = batch / t_cached
        print(f"batch {batch}: cached {cached_ips:.3f} img/s ({t_cached:.1f} s measured end to end)")
        for released, label in ((True, "full recompute as released (logits at every position)"),
                                (False, "full recompute, head on the last position only")):
            measured, steps, t_full = fulls[released]
            full_ips = batch / (t_full + t_decode)
            print(f"  vs {label}: {full_ips:.4f} img/s ({t_full:.1f} s sampling extrapolated from "
                  f"{measured:.1f} s measured over {steps}/{gcfg.img_len} steps, + {t_decode:.1f} s VQGAN "
                  f"decode measured) | ratio {cached_ips / full_ips:.1f}x")
    print(f"batch {big} guided (scale {args.guidance_scale}, {2 * big} GPT rows): cached "
          f"{big / t_guided:.3f} img/s ({t_guided:.1f} s end to end); peak RSS {rss:.2f} GB")
    if packed:
        print(f"weight packing for cached decoding: {t_pack:.2f} s, once per model (first sampling call; "
              f"not in the figures above, which are later calls)")
    if check is not None:
        t_sampler, t_est = check
        print(f"full-recompute check, batch 1: sampler over all {gcfg.img_len} steps {t_sampler:.1f} s "
              f"measured, {t_est:.1f} s extrapolated from windows ({t_est / t_sampler - 1:+.0%})")
    print(f"GPT cached decode batch {args.decode_batch}: {rate:.1f} GFLOP/s ({gflop:.0f} GFLOP of matmuls "
          f"in {t_dec:.1f} s over {gcfg.img_len - 1} steps) = {rate / probe.median:.0%} of measured matmul")
    print(f"load average at the end: {load_average()}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_args(p)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--decode-batch", type=int, default=32, help="rows for the GPT decode GFLOP/s figure")
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--window", type=int, default=4, help="full-recompute steps timed per window")
    p.add_argument("--windows", type=int, default=4, help="number of windows spread over the image")
    p.add_argument("--full-batch1", action="store_true",
                   help="also run the full-recompute sampler over all steps at batch 1 to check the estimate")
    p.add_argument("--matmul-size", type=int, default=MATMUL_SIZE, help="side of the reference fp32 matmul")
    p.add_argument("--probe-every", type=int, default=32, help="decode steps between matmul samples")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="model weights and activations")
    p.add_argument("--threads", type=int, help="default: the cores available to this process")
    p.add_argument("--allocator", choices=["tuned", "default"], default="tuned",
                   help="tuned: easynlp_artist.runtime.tune_cpu_allocator(), as the app does")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    fill_shape_defaults(args)
    return args


if __name__ == "__main__":
    run(parse_args())
