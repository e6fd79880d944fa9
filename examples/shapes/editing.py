"""Measure knowledge editing in the shapes world: entities taught from their facts, no images, no training.

    python -m examples.shapes.editing --model artist-shapes-tiny-zh --samples 20 --out bench/knowledge.md

1. **Re-derived held-out entities.** The held-out entities (never in a caption, known only through
   the graph) lose their trained TransE vectors; ``pipe.add_entities`` derives new ones from their
   triples with everything trained frozen. Their prompts are drawn with the trained vectors, the
   derived ones and none (same seeds, same prompts as ``ablation``).
2. **Entities new to the world** (``new_entities.tsv``: in neither the graph nor the captions, most
   with characters outside the model's vocabulary) are added with the command line
   (``python -m easynlp_artist.knowledge.extend``) and drawn with and without the additions.

An image is correct when the attribute reader finds both the colour and the shape of the entity.
Intervals: Wilson 95% per accuracy, paired bootstrap over prompts for differences (``ablation``).
The report replaces the section between the ``editing`` markers of ``--out`` (or is appended).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from easynlp_artist.knowledge.transe import read_triples
from easynlp_artist.pipeline import ArtistPipeline, make_image_grid
from modelzoo.files import write_text_atomic

from .ablation import bootstrap_difference, describe, explicit, parse_sampling, score, wilson
from .knowledge import build_triples, held_out_entities
from .world import EVAL_ENTITY_TEMPLATE, EvalPrompt

NEW_ENTITIES = Path(__file__).with_name("new_entities.tsv")
BEGIN, END = "<!-- editing:begin -->", "<!-- editing:end -->"
KIND = "heldout_entity"  # a kind the ablation tallies; every prompt here names an entity


def load(name_or_path) -> ArtistPipeline:
    pipe = ArtistPipeline.from_pretrained(name_or_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def entity_prompts(facts: dict[str, dict[str, str]]) -> list[EvalPrompt]:
    """One ``一个{entity}`` prompt per entity, with the colour and shape its facts give."""
    return [EvalPrompt(KIND, EVAL_ENTITY_TEMPLATE.format(entity=name), f["颜色"], f["形状"]) for name, f in facts.items()]


def facts_of(triples: Sequence[tuple[str, str, str]], names: Sequence[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {n: {} for n in names}
    for head, relation, tail in triples:
        if head in out:
            out[head][relation] = tail
    return out


def hits(pipe: ArtistPipeline, prompts: list[EvalPrompt], args: argparse.Namespace) -> list[int]:
    return score(pipe, prompts, args.samples, args.seed, args.sampling).hits


def accuracy(h: list[int], samples: int) -> str:
    k, n = sum(h), len(h) * samples
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def difference(a: list[int], b: list[int], samples: int) -> str:
    lo, hi = bootstrap_difference(a, b, samples)
    return f"{100 * (sum(a) - sum(b)) / (len(a) * samples):+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def neighbours(pipe: ArtistPipeline, name: str, exclude: set[str], k: int = 3) -> str:
    """The ``k`` named entities whose vectors are closest (cosine) to ``name``'s."""
    store = pipe.entities
    others = [n for n in store.names if n != name and n not in exclude]
    sims = F.cosine_similarity(store.vectors_for([store.id_of(name)]), store.vectors_for([store.id_of(n) for n in others]))
    top = sims.topk(min(k, len(others)))
    return ", ".join(f"{others[i]} {float(s):.2f}" for s, i in zip(top.values, top.indices))


def re_derived(args: argparse.Namespace) -> list[str]:
    held = [e.name for e in held_out_entities()]
    triples = [t for t in build_triples() if t[0] in held]
    prompts = entity_prompts(facts_of(triples, held))
    trained = load(args.model)
    derived = load(args.model)
    derived.remove_entities(held)
    none = load(args.model)
    none.remove_entities(held)
    derived.add_entities(triples)
    h = {name: hits(pipe, prompts, args) for name, pipe in (("trained", trained), ("derived", derived), ("none", none))}
    s = args.samples
    lines = [
        "## 1. Held-out entities: trained vectors against vectors derived from their triples",
        "",
        f"The {len(held)} held-out entities' trained vectors are dropped and derived again from their "
        f"{len(triples)} triples (colour, shape, category) by `pipe.add_entities`, every other vector and "
        "the relation vectors frozen. Same prompts (`一个{entity}`), same seeds.",
        "",
        "| vectors | n prompts × samples | accuracy | against trained (points) |",
        "|---|---|---|---|",
        f"| trained (TransE on the whole graph) | {len(held)} × {s} | {accuracy(h['trained'], s)} | |",
        f"| derived from the entity's triples | {len(held)} × {s} | {accuracy(h['derived'], s)} "
        f"| {difference(h['derived'], h['trained'], s)} |",
        f"| none (entity removed) | {len(held)} × {s} | {accuracy(h['none'], s)} "
        f"| {difference(h['none'], h['trained'], s)} |",
        "",
        "| entity | colour, shape | trained | derived | cosine(derived, trained) | nearest to the derived vector |",
        "|---|---|---|---|---|---|",
    ]
    for i, (name, p) in enumerate(zip(held, prompts)):
        a = trained.entities.vectors_for([trained.entities.id_of(name)])
        b = derived.entities.vectors_for([derived.entities.id_of(name)])
        lines.append(f"| {name} | {p.colour}{p.shape} | {h['trained'][i]}/{s} | {h['derived'][i]}/{s} "
                     f"| {float(F.cosine_similarity(a, b)):.2f} | {neighbours(derived, name, set())} |")
    return lines


def new_to_the_world(args: argparse.Namespace, workdir: Path) -> list[str]:
    triples = read_triples(args.triples)
    names = list(dict.fromkeys(h for h, _, _ in triples))
    prompts = entity_prompts(facts_of(triples, names))
    extended_dir = workdir / "extended"
    command = [sys.executable, "-m", "easynlp_artist.knowledge.extend", "--model", args.model,
               "--triples", str(args.triples), "--output_dir", str(extended_dir)]
    subprocess.run(command, check=True)
    base = load(args.model)
    extended = load(extended_dir)
    vocab = extended.tokenizer.get_vocab()
    h = {"with": hits(extended, prompts, args), "without": hits(base, prompts, args)}
    if args.picture:
        picture(base, extended, [p for p in prompts if any(n in p.prompt for n in args.shown)], args)
    s = args.samples
    lines = [
        "## 2. Entities new to the world, added with the command line",
        "",
        f"`{Path(args.triples).name}`: {len(names)} entities in neither the graph nor the captions, each with "
        "a colour, a shape and a category; added by "
        f"`python -m easynlp_artist.knowledge.extend --model {args.model} --triples {Path(args.triples).name} "
        "--output_dir extended`. Characters outside the model's vocabulary are shown in brackets (they read "
        "as `[UNK]`; the entity is still found and fused).",
        "",
        "| model | n prompts × samples | accuracy | difference (points) |",
        "|---|---|---|---|",
        f"| with the additions | {len(names)} × {s} | {accuracy(h['with'], s)} | {difference(h['with'], h['without'], s)} |",
        f"| without them | {len(names)} × {s} | {accuracy(h['without'], s)} | |",
        "",
        "| entity | colour, shape | with | without | nearest to its vector |",
        "|---|---|---|---|---|",
    ]
    for i, (name, p) in enumerate(zip(names, prompts)):
        shown = "".join(c if c in vocab else f"[{c}]" for c in name)
        lines.append(f"| {shown} | {p.colour}{p.shape} | {h['with'][i]}/{s} | {h['without'][i]}/{s} "
                     f"| {neighbours(extended, name, set(names) - {name})} |")
    return lines


PICTURE_SAMPLES = 4


def picture(base: ArtistPipeline, extended: ArtistPipeline, prompts: list[EvalPrompt], args: argparse.Namespace) -> None:
    """One row per prompt: samples without the additions, then the same seeds with them."""
    tiles = []
    for i, p in enumerate(prompts):
        for pipe in (base, extended):
            gen = torch.Generator().manual_seed(args.seed * 100_003 + i)
            tiles += pipe(p.prompt, num_images_per_prompt=PICTURE_SAMPLES, generator=gen).images
    grid = make_image_grid(tiles, rows=len(prompts), cols=2 * PICTURE_SAMPLES, scale=max(1, 96 // tiles[0].width))
    grid.save(args.picture)
    print(f"wrote {args.picture}: rows {', '.join(p.prompt for p in prompts)}; "
          f"{PICTURE_SAMPLES} without the additions, then {PICTURE_SAMPLES} with them")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.shapes.editing", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="artist-shapes-tiny-zh", help="a knowledge model of the shapes world")
    p.add_argument("--triples", default=str(NEW_ENTITIES), help="facts of entities new to the world")
    p.add_argument("--samples", type=int, default=20, help="images per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampling", type=parse_sampling, default={"top_p": 0.9},
                   help="sampling settings, e.g. top_p=0.9 (the embedded model's default)")
    p.add_argument("--out", required=True, help="markdown report: its editing section is replaced")
    p.add_argument("--picture", help="PNG: new entities drawn without and with the additions")
    p.add_argument("--shown", nargs="+", default=["火龙果", "积木", "雪花"], help="the new entities in the picture")
    args = p.parse_args(argv)
    args.sampling = explicit(args.sampling)
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        body = [
            BEGIN,
            "# Editing knowledge: entities taught from their facts",
            "",
            f"Measured {datetime.date.today().isoformat()} on {platform.machine()} ({os.cpu_count()} cores, CPU) "
            f"with `python -m examples.shapes.editing` (model `{args.model}`, samples per prompt {args.samples}, "
            f"seed {args.seed}, sampling: {describe(args.sampling)}).",
            "",
            *re_derived(args),
            "",
            *new_to_the_world(args, Path(tmp)),
            END,
        ]
    section = "\n".join(body) + "\n"
    out = Path(args.out)
    old = out.read_text("utf-8") if out.is_file() else ""
    if BEGIN in old and END in old:
        text = old[: old.index(BEGIN)] + section + old[old.index(END) + len(END) + 1:]
    else:
        text = old + ("\n" if old else "") + section
    write_text_atomic(out, text)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
