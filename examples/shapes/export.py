"""Package a trained shapes checkpoint as the embedded default model (half-precision weights).

    python -m examples.shapes.export --src runs/shapes/knowledge/best \\
        --dst easynlp_artist/resources/artist-shapes-tiny-zh

Writes config.json, model.safetensors (fp16), vocab.txt, the entity store and a model card; the
trainer's own files (optimizer state, exact training weights) are left behind.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from easynlp_artist.models.stage2.sampling import SamplingConfig
from easynlp_artist.pipeline import ArtistPipeline

from .ablation import describe, parse_sampling
from .knowledge import ENTITIES, held_out_entities

CARD = """# artist-shapes-tiny-zh

A tiny ARTIST (VQGAN + knowledge-fused GPT) trained on this repository's synthetic shapes world
(`examples/shapes/`) by `examples/shapes/train.sh`. It draws one coloured shape on a plain
background from a Chinese caption. Its entity store holds the TransE vectors of the {entities} nodes of
the world's knowledge graph ({real} real-world entities, their colours, shapes and categories). {held} of
them are never named in a training caption and known only through their vectors; which of those
it draws right, and how often, is measured in the repository's `bench/knowledge.md`.

- images: {size}×{size} px, {tokens} image tokens from a codebook of {codes}
- GPT: {layers} layers, {width} wide, {heads} heads, text of up to {text_len} tokens; entity vectors of width {edim}
- parameters: {params:,} (stored as float16, {mb:.1f} MB)
- sampling defaults (`generation_config.json`, used where a call leaves them unset): {sampling}
- license: Apache-2.0; the training data is generated, no external data.

Not a general text-to-image model: prompts outside the world's vocabulary of colours, shapes and
entities give arbitrary shapes.
"""


def export(src: str, dst: str, sampling: dict | None = None) -> Path:
    pipe = ArtistPipeline.from_pretrained(src)
    pipe.sampling = SamplingConfig().updated(**(sampling or {}))
    dst_path = Path(dst)
    with tempfile.TemporaryDirectory(dir=dst_path.parent if dst_path.parent.exists() else None) as tmp:
        out = pipe.save_pretrained(Path(tmp) / "model", dtype=torch.float16)
        cfg = pipe.model.config
        size_mb = sum(f.stat().st_size for f in out.iterdir()) / 2**20
        card = CARD.format(
            entities=len(pipe.entities) if pipe.entities is not None else 0,
            real=len(ENTITIES), held=len(held_out_entities()),
            size=cfg.vqgan.resolution, tokens=cfg.gpt.img_len, codes=cfg.vqgan.n_embed,
            layers=cfg.gpt.n_layer, width=cfg.gpt.n_embd, heads=cfg.gpt.n_head, text_len=cfg.gpt.text_len,
            edim=cfg.gpt.entity_dim, params=sum(p.numel() for p in pipe.model.parameters()), mb=size_mb,
            sampling=describe(sampling or {}),
        )
        (out / "README.md").write_text(card, encoding="utf-8")
        if dst_path.exists():
            shutil.rmtree(dst_path)
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(out), dst_path)
    return dst_path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.shapes.export", description=__doc__.split("\n")[0])
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--sampling", type=parse_sampling, default={},
                   help="the model's sampling defaults, e.g. top_p=0.9 (default: plain sampling)")
    args = p.parse_args(argv)
    out = export(args.src, args.dst, args.sampling)
    for f in sorted(out.iterdir()):
        print(f"{f.stat().st_size:>10,}  {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
