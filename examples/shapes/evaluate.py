"""Score generated images of the shapes world: does each image show the colour and shape its prompt asks for?

    python -m examples.shapes.evaluate PREDICTIONS.tsv [--text_column 1] [--image_column -1] [--rows OUT.tsv]

PREDICTIONS.tsv is a predict output without header, e.g. ``idx, text, gen_imgbase64``. The expected
colour and shape are parsed from the prompt itself (``parse_prompt``): from the entity it names, or
from the colour and shape words. Prints accuracy per kind (attribute, seen_entity, heldout_entity):
colour, shape, and both correct. ``--rows`` writes one line per image with what was read.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .attributes import Attributes, read_attributes
from .knowledge import ENTITIES
from .palette import COLOURS, SHAPES
from .world import EVAL_KINDS, EvalPrompt, decode_base64_image


def parse_prompt(text: str) -> EvalPrompt | None:
    """The kind and expected (colour, shape) of a prompt of the world; None if it names neither clearly."""
    entities = [e for e in ENTITIES if e.name in text]
    if len(entities) == 1:
        entity = entities[0]
        kind = "heldout_entity" if entity.held_out else "seen_entity"
        return EvalPrompt(kind, text, entity.colour, entity.shape)
    if entities:
        return None
    colours = [c.name for c in COLOURS if c.name in text]
    shapes = [s.name for s in SHAPES if s.name in text] or [s.name for s in SHAPES if s.short in text]
    if len(colours) == 1 and len(shapes) == 1:
        return EvalPrompt("attribute", text, colours[0], shapes[0])
    return None


@dataclass
class KindScore:
    n: int = 0
    colour: int = 0
    shape: int = 0
    both: int = 0

    def add(self, expected: EvalPrompt, read: Attributes) -> None:
        self.n += 1
        self.colour += read.colour == expected.colour
        self.shape += read.shape == expected.shape
        self.both += (read.colour, read.shape) == (expected.colour, expected.shape)

    def rates(self) -> dict[str, float]:
        if self.n == 0:
            return {"colour": float("nan"), "shape": float("nan"), "both": float("nan")}
        return {"colour": self.colour / self.n, "shape": self.shape / self.n, "both": self.both / self.n}


@dataclass(frozen=True)
class ScoredImage:
    expected: EvalPrompt
    read: Attributes


def score_images(
    pairs: Iterable[tuple[str, Image.Image | np.ndarray]],
) -> tuple[dict[str, KindScore], list[ScoredImage]]:
    """Per-kind scores of (prompt, image) pairs; prompts that ``parse_prompt`` cannot read are skipped."""
    scores = {kind: KindScore() for kind in EVAL_KINDS}
    scored = []
    for text, image in pairs:
        expected = parse_prompt(text)
        if expected is None:
            continue
        read = read_attributes(image)
        scores[expected.kind].add(expected, read)
        scored.append(ScoredImage(expected, read))
    return scores, scored


def _read_table(path: str, text_column: int, image_column: int) -> Iterable[tuple[str, Image.Image]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            yield fields[text_column], decode_base64_image(fields[image_column])


def _write_rows(path: str, scored: Sequence[ScoredImage]) -> None:
    lines = ["kind\tprompt\tcolour\tshape\tread_colour\tread_shape\tconfidence\n"]
    for item in scored:
        e, r = item.expected, item.read
        confidence = "" if r.confidence is None else f"{r.confidence:.3f}"
        lines.append(
            "\t".join([e.kind, e.prompt, e.colour, e.shape, r.colour or "", r.shape or "", confidence]) + "\n"
        )
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(lines)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", help="tsv without header holding prompts and base64 images")
    parser.add_argument("--text_column", type=int, default=1)
    parser.add_argument("--image_column", type=int, default=-1)
    parser.add_argument("--rows", help="write per-image results to this tsv")
    args = parser.parse_args(argv)
    scores, scored = score_images(_read_table(args.predictions, args.text_column, args.image_column))
    print("kind\tn\tcolour\tshape\tboth")
    for kind, score in scores.items():
        rates = score.rates()
        print(f"{kind}\t{score.n}\t{rates['colour']:.3f}\t{rates['shape']:.3f}\t{rates['both']:.3f}")
    if args.rows:
        _write_rows(args.rows, scored)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
