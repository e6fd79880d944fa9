"""Text-to-image generation throughput on CPU: the KV-cache sampler against the full-recompute one.

Measures, in one process and under the same load:

* images/s end to end (image-token sampling + VQGAN decode) at each ``--batches`` size, for
  ``generate`` below (KV-cache sampler + decode, what a pipeline call runs) and for the original algorithm, the full-recompute sampler
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
import contextlib
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
from easynlp_artist.models.stage2.sampling import JacobiStats, SamplingConfig, sample_image_tokens
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


def generate(model: ArtistModel, text: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes sampled with the KV cache, then decoded by the VQGAN: what one pipeline call costs."""
    codes = sample_image_tokens(model.gpt, text, **kwargs)
    return model.vqgan.decode(codes), codes


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
        generate(model, prompts(gcfg, 1, gen), image_prefix=prefix, generator=gen)
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
        t_guided, _ = timed(lambda: generate(model, text, sampling=guided, generator=gen))
        rss = peak_rss_gb()
        probe.sample(3)
        progress(f"batch {big} guided: {t_guided:.1f} s, peak RSS {rss:.2f} GB")

        rows = []
        for batch in args.batches:
            text = prompts(gcfg, batch, gen)
            t_cached, (_, codes) = timed(lambda t=text: generate(model, t, generator=gen))
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


# ---- fast decoding (--section decoding): bf16, int8 weights, Jacobi, the Hugging Face peer ---------

ISA_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")


def isa_flags() -> str:
    """The vector ISA extensions of this CPU that decide the bf16/int8 kernels (from /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    have = [x for x in ISA_FLAGS if x in flags]
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return (" ".join(have) or "none of " + " ".join(ISA_FLAGS)) + (f" (oneDNN capped at {isa})" if isa else "")


def stream_bandwidth(mib: int) -> float:
    """Best of 5 reads of a ``mib`` MiB tensor (a sum): bytes per second one thread streams from memory."""
    x = torch.ones(mib * 2**20 // 4)
    best = min(timed(x.sum)[0] for _ in range(5))
    return x.numel() * 4 / best


def step_bytes(gpt: ArtistGPT, cache: decoding.KVCache, rows: int, keys: int) -> tuple[int, int]:
    """Bytes one cached step must read: every decoding Linear's weight (in the cache's form) and
    bias, and the keys and values of ``keys`` positions for ``rows`` rows."""
    weights = 0
    for m in decoding.decoding_linears(gpt):
        copy_ = cache.packed.get(m)
        if isinstance(copy_, decoding.Int8Weight):
            weights += copy_.codes.numel() + copy_.scales.numel() * copy_.scales.element_size()
        else:  # the packed oneDNN copy has the weight's element count and size
            weights += m.weight.numel() * m.weight.element_size()
        if m.bias is not None:
            weights += m.bias.numel() * m.bias.element_size()
    kv = 2 * gpt.config.n_layer * rows * keys * gpt.config.n_embd * cache.k.element_size()
    return weights, kv


def pass_seconds(gpt: ArtistGPT, rows: int, weights: str, keys: int, fed: int, reps: int) -> tuple[float, int, int]:
    """Best time of one cached pass feeding ``fed`` positions per row after ``keys - 1`` cached ones
    (fed=1: a decoding step; fed=L+1: a Jacobi window), and the bytes a step reads."""
    cfg = gpt.config
    cache = decoding.new_cache(gpt, rows, rows_per_step=rows * fed, weights=weights)
    gen = torch.Generator().manual_seed(0)
    gpt.prefill(prompts(cfg, rows, gen), None, cache)
    ids = torch.randint(0, cfg.img_vocab_size, (rows, keys - cfg.text_len), generator=gen)
    gpt._run(gpt.tok_emb(ids[:, :-1]), cache)
    start = cache.length
    best = float("inf")
    for _ in range(reps):
        cache.length = start
        best = min(best, timed(lambda: decoding.window_logits(gpt, ids[:, -fed:], cache))[0])
    return (best, *step_bytes(gpt, cache, rows, keys))


def hf_generate_seconds(cfg: GPTConfig, rows: int, dtype: torch.dtype) -> float | None:
    """Hugging Face ``GPT2LMHeadModel.generate`` (KV cache) at the same layer shapes, the head over
    the image codes, sampling ``img_len`` tokens after ``text_len`` prompt tokens."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    hf = GPT2LMHeadModel(GPT2Config(
        vocab_size=cfg.img_vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, activation_function="gelu", layer_norm_epsilon=1e-5, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=None,
    )).to(dtype).eval()
    ids = torch.randint(0, cfg.img_vocab_size, (rows, cfg.text_len))
    kw = dict(max_new_tokens=cfg.img_len, min_new_tokens=cfg.img_len, do_sample=True, top_k=0, top_p=1.0,
              pad_token_id=0, eos_token_id=None, attention_mask=torch.ones_like(ids))
    hf.generate(ids[:, :4], **{**kw, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
    return timed(lambda: hf.generate(ids, **kw))[0]


def embedded_acceptance(window: int, images: int) -> tuple[JacobiStats, int, float, float]:
    """Jacobi decoding on the embedded default model at its default sampling: the stats, the image
    side in codes, and the seconds of Jacobi and of sequential sampling for the same prompts."""
    from easynlp_artist import ArtistPipeline

    pipe = ArtistPipeline.from_pretrained("artist-shapes-tiny-zh")
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "prompts.tsv")
    with open(path, encoding="utf-8") as f:
        texts = [line.split("\t")[1].strip() for line in f if line.strip()]
    text, know = pipe.encode_prompts(texts, None)
    stats = JacobiStats()
    jacobi = pipe.sampling.updated(method="jacobi", jacobi_window=window)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(len(texts))]  # noqa: E731
    run = functools.partial(sample_image_tokens, pipe.model.gpt, text, know, num_images_per_prompt=images)
    t_jacobi, _ = timed(lambda: run(sampling=jacobi, generator=gens(), stats=stats))
    t_seq, _ = timed(lambda: run(sampling=pipe.sampling, generator=gens()))
    return stats, int(pipe.model.config.gpt.img_len ** 0.5), t_jacobi, t_seq


@contextlib.contextmanager
def one_row_packing(gpt: ArtistGPT, packed: bool):
    """Within: one-row steps of ``gpt`` use packed weights or not, whatever this CPU measured."""
    store = decoding._store(gpt)
    measured = decoding.one_row_packing_pays(gpt)
    store.one_row = packed
    try:
        yield
    finally:
        store.one_row = measured


def run_decoding(args: argparse.Namespace) -> None:
    """Decode steps per dtype / weight form next to their floors, whole sampling calls against the
    Hugging Face peer, and Jacobi decoding's speed-up (pass cost here × acceptance on the embedded model)."""
    torch.set_num_threads(args.threads or available_cores())
    torch.manual_seed(args.seed)
    cfg = build_config(args).gpt
    print(f"machine: {describe_machine()}")
    print(f"isa: {isa_flags()}; oneDNN bf16 {torch.ops.mkldnn._is_mkldnn_bf16_supported()}, "
          f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"shape: GPT {cfg.n_layer} layers x {cfg.n_embd} wide, {cfg.n_head} heads, {cfg.img_vocab_size} codes, "
          f"{cfg.text_len} text + {cfg.img_len} image tokens; random weights")
    bw = stream_bandwidth(args.stream_mib)
    print(f"streaming bandwidth: {bw / 1e9:.1f} GB/s (sum of a {args.stream_mib} MiB tensor, best of 5)")
    fp32 = ArtistGPT(cfg).eval()
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    variants = [("fp32", fp32, "model"), ("bf16", bf16, "model"), ("int8", fp32, "int8")]
    keys = cfg.text_len + cfg.img_len // 2  # a step in the middle of the image
    L = args.jacobi_window
    with torch.inference_mode():
        steps = {}
        for label, gpt, weights in variants:
            for rows in args.batches:
                t, wb, kvb = pass_seconds(gpt, rows, weights, keys, 1, args.reps)
                steps[label, rows] = t
                floor = (wb + kvb) / bw
                print(f"decode step {label} batch {rows}: {t * 1e3:.1f} ms at {keys} positions; floor "
                      f"{floor * 1e3:.1f} ms ({wb / 1e6:.0f} MB weights + {kvb / 1e6:.0f} MB KV at "
                      f"{bw / 1e9:.1f} GB/s) = {t / floor:.2f}x floor")
            t, _, _ = pass_seconds(gpt, 1, weights, keys, L + 1, args.reps)
            steps[label, "window"] = t
            print(f"jacobi pass {label} batch 1 ({L + 1} positions): {t * 1e3:.1f} ms = "
                  f"{t / steps[label, 1]:.2f} steps")
        for label, gpt, weights in variants:
            for rows in args.batches:
                sampling = SamplingConfig(weights=weights)
                t, _ = timed(lambda g=gpt, r=rows, s=sampling: sample_image_tokens(g, prompts(cfg, r, torch.Generator()),
                                                                                    sampling=s))
                steps[label, rows, "sample"] = t
                line = (f"sampling {label} batch {rows}: {t:.2f} s for {cfg.img_len} codes "
                        f"({rows / t:.3f} img/s sampling only), {steps['fp32', rows, 'sample'] / t:.2f}x fp32")
                if weights == "model" and not args.no_hf:
                    t_hf = hf_generate_seconds(cfg, rows, gpt.pos_emb.dtype)
                    if t_hf is not None:
                        line += f"; HF GPT2LMHeadModel.generate {t_hf:.2f} s, ours {t_hf / t:.2f}x HF"
                print(line)
        # the one-row fp32 path before it was measured per machine: plain products, side by side
        chosen = decoding.one_row_packing_pays(fp32)
        with one_row_packing(fp32, False):
            t_plain, _, _ = pass_seconds(fp32, 1, "model", keys, 1, args.reps)
            t_plain_sample, _ = timed(lambda: sample_image_tokens(fp32, prompts(cfg, 1, torch.Generator())))
        print(f"fp32 batch 1, one-row packing measured on this CPU: {'packed' if chosen else 'plain'}; step "
              f"{steps['fp32', 1] * 1e3:.1f} ms against plain products (the earlier fixed rule) "
              f"{t_plain * 1e3:.1f} ms = {t_plain / steps['fp32', 1]:.2f}x; sampling {steps['fp32', 1, 'sample']:.2f} s "
              f"against {t_plain_sample:.2f} s = {t_plain_sample / steps['fp32', 1, 'sample']:.2f}x")
        # the whole Jacobi loop here (random weights accept ~1 code per pass: this is its overhead)
        jstats = JacobiStats()
        t_loop, _ = timed(lambda: sample_image_tokens(bf16, prompts(cfg, 1, torch.Generator()), stats=jstats,
                                                      sampling=SamplingConfig(method="jacobi", jacobi_window=L)))
        print(f"jacobi sampling bf16 batch 1, random weights: {t_loop:.2f} s, {jstats.passes} passes "
              f"({jstats.accepted_per_pass():.2f} codes each), {t_loop / max(jstats.passes, 1) * 1e3:.1f} ms per "
              f"pass in the loop vs {steps['bf16', 'window'] * 1e3:.1f} ms for the pass alone")
    # outside inference mode: the loaded model's weights must stay ordinary tensors (their version
    # counters tell the decoding copies when to be remade)
    stats, side, t_jac, t_seq = embedded_acceptance(L, args.embedded_images)
    bands = [(r, min(r + args.band_rows, side)) for r in range(0, side, args.band_rows)]
    accepted = stats.accepted_per_pass()
    per_band = ", ".join(f"rows {a}-{b - 1}: {stats.accepted_per_pass(a * side, b * side):.2f}" for a, b in bands)
    print(f"embedded model, Jacobi window {L}, its default sampling, {len(stats.commits)} row-passes: accepted "
          f"codes per pass {accepted:.2f} ({per_band}); sampling {t_jac:.2f} s vs sequential {t_seq:.2f} s there")
    for label, _, _ in variants:
        speedup = accepted * steps[label, 1] / steps[label, "window"]
        print(f"jacobi speed-up {label} batch 1 (derived: {accepted:.2f} codes per pass on the embedded model "
              f"x step {steps[label, 1] * 1e3:.1f} ms / pass {steps[label, 'window'] * 1e3:.1f} ms here): "
              f"{speedup:.2f}x sequential {label}, {speedup * steps['fp32', 1] / steps[label, 1]:.2f}x fp32 sequential")
    print(f"load average at the end: {load_average()}")


def run_linears(args: argparse.Namespace) -> None:
    """One Linear's product, plain (``F.linear``) against oneDNN-packed, per weight shape and row
    count — the embedded model's shapes and the ARTIST-base shape's — the same weight over and over
    (so weights up to a few MB stay in cache: a whole step, where they stream, is the figure that
    decides one row: ``decoding.one_row_packing_pays``), and a whole fp32 step of one row each way."""
    import torch.nn.functional as F

    torch.set_num_threads(args.threads or 1)
    print(f"machine: {describe_machine()}; isa: {isa_flags()}")
    cfg = build_config(args).gpt
    shapes = [(384, 128), (128, 128), (512, 128), (128, 512), (256, 128),  # the embedded model's
              (3 * cfg.n_embd, cfg.n_embd), (4 * cfg.n_embd, cfg.n_embd), (cfg.img_vocab_size, cfg.n_embd)]
    rows_list = (1, 2, 8, 16)
    print("| weight (out x in) | MB | " + " | ".join(f"{r} row(s): plain / packed us" for r in rows_list) + " |")
    print("|---|---|" + "---|" * len(rows_list))

    def us(fn, n: int) -> float:
        for _ in range(max(3, n // 10)):
            fn()
        return min(timed(lambda: [fn() for _ in range(n)])[0] for _ in range(3)) / n * 1e6

    with torch.inference_mode():
        for out, inp in shapes:
            w, b = torch.randn(out, inp), torch.randn(out)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, 2)
            n = max(5, int(2e8 // (out * inp)) // 10)
            cells = []
            for r in rows_list:
                x = torch.randn(r, 1, inp)
                plain = us(lambda x=x, w=w, b=b: F.linear(x, w, b), n)
                fast = us(lambda x=x, p=packed, b=b: torch.ops.mkldnn._linear_pointwise(x, p, b, "none", [], "none"), n)
                mark = "**" if r * w.numel() >= decoding.PACK_MIN_PRODUCT else ""
                cells.append(f"{mark}{plain:.1f} / {fast:.1f}{mark}")
            print(f"| {out} x {inp} | {w.numel() * 4 / 1e6:.2f} | " + " | ".join(cells) + " |")
        print(f"(bold: packed by the rule rows x elements >= {decoding.PACK_MIN_PRODUCT} for two rows or more)")
    gpt = ArtistGPT(cfg).eval()  # outside inference mode: its weights' version counters key the packed copies
    with torch.inference_mode():
        keys = cfg.text_len + cfg.img_len // 2
        chosen = decoding.one_row_packing_pays(gpt)
        figures = {}
        for label, one_row in (("plain", False), ("packed", True)):
            with one_row_packing(gpt, one_row):
                figures[label] = pass_seconds(gpt, 1, "model", keys, 1, args.reps)[0]
        print(f"whole fp32 step, 1 row, ARTIST-base shape: plain {figures['plain'] * 1e3:.1f} ms, packed "
              f"{figures['packed'] * 1e3:.1f} ms ({figures['plain'] / figures['packed']:.2f}x); "
              f"one_row_packing_pays here: {chosen}")


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
    p.add_argument("--section", choices=["samplers", "decoding", "linears"], default="samplers",
                   help="samplers: cached vs full recompute (above); decoding: dtypes, int8, Jacobi, HF peer; "
                        "linears: plain vs oneDNN-packed products per shape and rows")
    p.add_argument("--jacobi-window", type=int, default=16, help="decoding: Jacobi guesses per pass")
    p.add_argument("--reps", type=int, default=5, help="decoding: timed passes per figure (the best is kept)")
    p.add_argument("--stream-mib", type=int, default=512, help="decoding: tensor read for the bandwidth figure")
    p.add_argument("--embedded-images", type=int, default=4, help="decoding: images per demo prompt for acceptance")
    p.add_argument("--band-rows", type=int, default=2, help="decoding: image rows per acceptance band")
    p.add_argument("--no-hf", action="store_true", help="decoding: skip the Hugging Face generate peer")
    args = p.parse_args(argv)
    fill_shape_defaults(args)
    return args


if __name__ == "__main__":
    parsed = parse_args()
    {"decoding": run_decoding, "linears": run_linears}.get(parsed.section, run)(parsed)
