"""Measure the paper's claim in the shapes world: does knowledge make entities come out right?

    python -m examples.shapes.ablation --knowledge CKPT_K --plain CKPT_P \\
        --prompts world/eval_prompts.tsv --samples 20 --out bench/knowledge.md \\
        [--sampling guidance_scale=1 "guidance_scale=1,top_p=0.9" ...]

For every prompt of ``eval_prompts.tsv`` (kinds: attribute, seen_entity, heldout_entity; each in a
phrasing family, some of them never in training) both models draw ``--samples`` images with the
same seeds; the deterministic attribute reader decides colour
and shape of each, and an image counts as correct when both match the prompt. Generated images
smaller than the world's 64 px are upscaled (bicubic) before reading — the same step is applied to
the "ceiling" row, ground-truth renders passed through the model's own VQGAN, which shows how much
of any error is stage 1's. Intervals: Wilson 95% for each accuracy; for the difference between
the models, a 95% bootstrap interval that resamples prompts (samples of one prompt are not
independent). Tables: per kind; per kind and phrasing family; per held-out entity (all families).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from easynlp_artist.models.stage2.sampling import SamplingConfig
from easynlp_artist.pipeline import ArtistPipeline
from modelzoo.files import atomic_path

from .attributes import read_attributes
from .knowledge import held_out_entities
from .palette import IMAGE_SIZE
from .world import PHRASING_BY_NAME, EvalPrompt, render

KINDS = ("attribute", "seen_entity", "heldout_entity")
PROMPTS_PER_CALL = 16
Z95 = 1.959963984540054


@dataclass
class Tally:
    prompts: list[EvalPrompt]
    hits: list[int] = field(default_factory=list)  # per prompt: samples with colour and shape both right

    def select(self, keep) -> list[int]:
        return [h for p, h in zip(self.prompts, self.hits, strict=True) if keep(p)]


def read_prompts(path: str) -> list[EvalPrompt]:
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    # a prompt file without the family column (an older world) reads as family ""
    prompts = [EvalPrompt(r["kind"], r["prompt"], r["colour"], r["shape"], r.get("family") or "") for r in rows]
    bad = sorted({p.kind for p in prompts} - set(KINDS))
    if bad:
        raise ValueError(f"{path}: unknown kinds {bad}")
    return prompts


def family_label(family: str) -> str:
    held = family in PHRASING_BY_NAME and PHRASING_BY_NAME[family].held_out
    return f"{family} (held out)" if held else family or "all"


def correct(img: Image.Image, colour: str, shape: str) -> bool:
    if img.size != (IMAGE_SIZE, IMAGE_SIZE):
        img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
    read = read_attributes(img)
    return (read.colour, read.shape) == (colour, shape)


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + Z95**2 / n
    c = (p + Z95**2 / (2 * n)) / d
    h = Z95 * np.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / d
    return c - h, c + h


def bootstrap_difference(a: list[int], b: list[int], samples: int, rounds: int = 2000, seed: int = 0):
    """95% interval of mean(a) - mean(b) in accuracy points, resampling prompts (paired)."""
    rng = np.random.default_rng(seed)
    a_arr, b_arr = np.asarray(a, float) / samples, np.asarray(b, float) / samples
    idx = rng.integers(0, len(a_arr), size=(rounds, len(a_arr)))
    diffs = (a_arr[idx] - b_arr[idx]).mean(axis=1)
    return np.percentile(diffs, 2.5), np.percentile(diffs, 97.5)


@torch.no_grad()
def score(pipe: ArtistPipeline, prompts: Sequence[EvalPrompt], samples: int, seed: int, sampling: dict) -> Tally:
    """Prompts go through the pipeline in groups, each with its own generator (seeded by its index),
    so a prompt draws what it would draw alone."""
    tally = Tally(list(prompts))
    for start in range(0, len(prompts), PROMPTS_PER_CALL):
        group = prompts[start : start + PROMPTS_PER_CALL]
        gens = [torch.Generator().manual_seed(seed * 100_003 + start + j) for j in range(len(group))]
        out = pipe([p.prompt for p in group], num_images_per_prompt=samples, generator=gens,
                   sampling=SamplingConfig(**sampling))
        for j, p in enumerate(group):
            images = out.images[j * samples : (j + 1) * samples]  # prompt-major order
            tally.hits.append(sum(correct(img, p.colour, p.shape) for img in images))
    return tally


@torch.no_grad()
def ceiling(pipe: ArtistPipeline, prompts: Sequence[EvalPrompt], samples: int, seed: int) -> tuple[int, int]:
    """Ground-truth renders of the prompts' attributes, through the VQGAN and back, then read."""
    from easynlp_artist.data import image_to_tensor
    from easynlp_artist.models.stage1.vqgan import images_to_uint8

    rng = np.random.default_rng(seed)
    vq = pipe.model.vqgan
    hits = total = 0
    for p in prompts:
        truth = [render(p.colour, p.shape, rng=rng) for _ in range(samples)]
        x = torch.stack([image_to_tensor(t, vq.config.resolution) for t in truth]).to(pipe.device)
        pixels = images_to_uint8(vq.decode(vq.encode(x))).cpu().numpy()
        hits += sum(correct(Image.fromarray(px), p.colour, p.shape) for px in pixels)
        total += samples
    return hits, total


SAMPLING_KEYS = {"top_k": int, "top_p": float, "temperature": float, "guidance_scale": float}


def parse_sampling(text: str) -> dict:
    """``"guidance_scale=2,top_p=0.9"`` → keyword arguments of the pipeline (unknown keys rejected)."""
    out = {}
    for item in filter(None, text.replace(",", " ").split()):
        key, sep, value = item.partition("=")
        if not sep or key not in SAMPLING_KEYS:
            raise argparse.ArgumentTypeError(f"{text!r}: expected key=value with key in {sorted(SAMPLING_KEYS)}, got {item!r}")
        out[key] = SAMPLING_KEYS[key](value)
    return out


def explicit(sampling: dict) -> dict:
    """Every sampling argument spelled out, so that no checkpoint's own defaults
    (generation_config.json) change what is measured: unnamed ones are plain sampling."""
    full = SamplingConfig().updated(**sampling).to_dict()
    return {**full, "top_k": full["top_k"] or 0, "top_p": full["top_p"] or 1.0}


def describe(sampling: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sampling.items()) or "plain sampling"


def table_row(label: str, a: list[int], b: list[int], samples: int) -> str:
    """One markdown row: the knowledge model's hits ``a`` and the plain model's ``b``, per prompt."""
    n = len(a) * samples
    ka, pa = sum(a), sum(b)
    lo_k, hi_k = wilson(ka, n)
    lo_p, hi_p = wilson(pa, n)
    lo_d, hi_d = bootstrap_difference(a, b, samples)
    return (
        f"| {label} | {len(a)} × {samples} | {100 * ka / n:.1f}% [{100 * lo_k:.1f}, {100 * hi_k:.1f}] "
        f"| {100 * pa / n:.1f}% [{100 * lo_p:.1f}, {100 * hi_p:.1f}] "
        f"| {100 * (ka - pa) / n:+.1f} [{100 * lo_d:+.1f}, {100 * hi_d:+.1f}] |"
    )


HEADER = [
    "| prompts | n prompts × samples | knowledge | no knowledge | difference (points) |",
    "|---|---|---|---|---|",
]


def report(results: dict[str, Tally], ceil: tuple[int, int], args: argparse.Namespace, sampling: dict) -> str:
    k, pl = results["knowledge"], results["plain"]
    samples = args.samples

    def rows(label: str, keep) -> list[str]:
        a, b = k.select(keep), pl.select(keep)
        return [table_row(label, a, b, samples)] if a else []

    lines = [
        f"# Knowledge ablation in the shapes world — {describe(sampling)}",
        "",
        f"Measured {datetime.date.today().isoformat()} on {platform.machine()} "
        f"({os.cpu_count()} cores, CPU) with `python -m examples.shapes.ablation` "
        f"(samples per prompt: {samples}, seed {args.seed}; sampling: {describe(sampling)}; "
        f"anything not named is plain: no top-k/top-p, temperature 1, guidance 1).",
        "",
        f"- knowledge model: `{args.knowledge}`",
        f"- no-knowledge model (same data, same recipe, no entity vectors): `{args.plain}`",
        "",
        "An image is correct when the attribute reader finds both the colour and the shape the prompt asks "
        "for. Accuracies with Wilson 95% intervals; the difference with a 95% bootstrap interval over prompts.",
        "",
        *HEADER,
    ]
    for kind in KINDS:
        lines += rows(kind, lambda p, kind=kind: p.kind == kind)
    families = list(dict.fromkeys(p.family for p in k.prompts))
    if families != [""]:
        lines += ["", "By phrasing family (held-out families never occur in training captions):", "", *HEADER]
        for kind in KINDS:
            for family in families:
                lines += rows(f"{kind}, {family_label(family)}", lambda p, kind=kind, f=family: (p.kind, p.family) == (kind, f))
    lines += ["", "Per held-out entity, all families together:", "", *HEADER]
    for entity in held_out_entity_names(k.prompts):
        lines += rows(entity, lambda p, e=entity: p.kind == "heldout_entity" and e in p.prompt)
    hc, tc = ceil
    lo, hi = wilson(hc, tc)
    lines += [
        "",
        f"Ceiling — ground-truth renders through the knowledge model's VQGAN, then read: "
        f"{100 * hc / tc:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] of {tc}.",
        "",
    ]
    return "\n".join(lines)


def held_out_entity_names(prompts: Sequence[EvalPrompt]) -> list[str]:
    """The held-out entities the prompts name, in graph order."""
    return [e.name for e in held_out_entities() if any(p.kind == "heldout_entity" and e.name in p.prompt for p in prompts)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.shapes.ablation", description=__doc__.split("\n")[0])
    p.add_argument("--knowledge", required=True, help="checkpoint with entity vectors")
    p.add_argument("--plain", required=True, help="the same recipe without knowledge")
    p.add_argument("--prompts", required=True, help="eval_prompts.tsv of the world")
    p.add_argument("--samples", type=int, default=4, help="images per prompt and model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampling", nargs="+", type=parse_sampling, default=[{}],
                   help="one table per item, e.g. guidance_scale=2 or 'top_p=0.9,temperature=0.8' (same seeds)")
    p.add_argument("--out", required=True, help="markdown report to write")
    args = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    prompts = read_prompts(args.prompts)
    pipes = {name: ArtistPipeline.from_pretrained(getattr(args, name)) for name in ("knowledge", "plain")}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    ceil = ceiling(pipes["knowledge"], prompts, args.samples, args.seed)
    sections = []
    for sampling in args.sampling:
        results = {name: score(pipe, prompts, args.samples, args.seed, explicit(sampling)) for name, pipe in pipes.items()}
        sections.append(report(results, ceil, args, sampling))
    text = "\n".join(sections)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
