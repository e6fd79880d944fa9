"""The synthetic "shapes and knowledge" world: rendering, captions, and the dataset builder.

Each image is 64×64 RGB and shows one shape (circle, square, triangle, star) in one of six colours
on a white, black or grey background, at a varied position and size. Captions are Chinese and
either name the attributes ("一个红色的圆形在白色背景上") or name a real-world entity ("白色背景上的番茄"),
the image then showing that entity's colour and shape, in one of several phrasing families (word
orders, measure words, commands, short forms; ``PHRASINGS``). Held-out entities and held-out
families never appear in training or validation captions.

    python -m examples.shapes.world --out DIR --seed 0 [--n_train N --n_valid N --n_test_prompts N]

writes (all atomically, deterministic from the seed, byte for byte):

- ``train.tsv``, ``valid.tsv``: ``idx\\ttext\\timgbase64`` (no header; base64 PNG, standard alphabet)
- ``test.tsv``: ``idx\\ttext``
- ``eval_prompts.tsv``: header ``kind\\tprompt\\tcolour\\tshape\\tfamily``; kind ∈ attribute,
  seen_entity, heldout_entity; family ∈ the phrasing families
- ``triples.tsv``: ``head\\trelation\\ttail``; ``entity2id.txt`` and ``relation2id.txt``: first line the
  count, then ``name\\tid``
- ``entities.json``: vocabularies with RGB values, entities with colour/shape/held-out flag, counts
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from modelzoo.files import write_text_atomic

from .knowledge import (
    ENTITIES,
    MEASURE_WORDS,
    Entity,
    build_triples,
    graph_nodes,
    graph_relations,
    held_out_entities,
    seen_entities,
)
from .palette import (
    BACKGROUND_BY_NAME,
    BACKGROUNDS,
    COLOUR_BY_NAME,
    COLOURS,
    IMAGE_SIZE,
    RGB,
    SHAPE_BY_NAME,
    SHAPES,
)

SUPERSAMPLE = 4
"""Shapes are drawn at this multiple of the final size, then downsampled (anti-aliasing)."""

MIN_SIZE_FRACTION = 0.45
MAX_SIZE_FRACTION = 0.8
"""Shape size (side of its bounding square) as a fraction of the image side."""

MARGIN = 2
"""Minimum distance in pixels between the shape's bounding square and the image border."""

STAR_INNER_RATIO = 0.4
"""Inner radius of the five-pointed star over its outer radius."""

ENTITY_CAPTION_FRACTION = 0.5
"""Share of training/validation captions that name an entity rather than the attributes."""

@dataclass(frozen=True)
class Phrasing:
    """A family of captions: how people word "a red circle" and "a tomato" in one way.

    Attribute templates use {colour} {shape} {short} {background} {mw}; entity templates {entity}
    {background} {mw} ({mw}: the measure word of the shape or of the entity's category). Families
    marked ``held_out`` never occur in training or validation captions; the ablation reports them
    apart, so that its figure measures phrasings the model has not seen."""

    name: str
    attribute: tuple[str, ...]
    entity: tuple[str, ...]
    held_out: bool = False


PHRASINGS: tuple[Phrasing, ...] = (
    Phrasing("template", ("一个{colour}的{shape}",), ("一个{entity}",)),
    Phrasing(
        "background",
        ("一个{colour}的{shape}在{background}背景上", "{background}背景上有一个{colour}{shape}", "{background}背景上的{colour}{shape}"),
        ("{background}背景上的{entity}", "一个{entity}在{background}背景上", "{background}背景上有一个{entity}"),
    ),
    Phrasing("command", ("画一个{colour}的{shape}", "请画一{mw}{colour}的{short}"), ("画一个{entity}", "请画一{mw}{entity}")),
    Phrasing("short", ("{colour}{shape}", "{colour}的{short}"), ("{entity}", "{entity}的图片")),
    Phrasing("shape_first", ("一个{shape}，{colour}的", "{shape}，颜色是{colour}"), ("{entity}，{background}背景",)),
    Phrasing("measure_word", ("一{mw}{colour}的{shape}", "一{mw}{colour}{short}"), ("一{mw}{entity}",)),
    Phrasing(
        "context",
        ("桌上放着一{mw}{colour}的{shape}", "我看见{background}背景前有{colour}的{short}"),
        ("桌上放着一{mw}{entity}", "我看见{background}背景前有{entity}"),
        held_out=True,
    ),
    Phrasing(
        "request",
        ("帮我画一张{colour}{shape}的图", "{shape}要{colour}的"),
        ("帮我画一张{entity}的图", "想要一{mw}{entity}"),
        held_out=True,
    ),
)

TRAIN_PHRASINGS = tuple(p for p in PHRASINGS if not p.held_out)
PHRASING_BY_NAME = {p.name: p for p in PHRASINGS}

SHAPE_MEASURE_WORDS = {"圆形": "颗", "正方形": "块", "三角形": "块", "星形": "颗"}

EVAL_ENTITY_TEMPLATE = PHRASINGS[0].entity[0]
"""The plainest entity prompt, 一个{entity}."""

MAX_CAPTION_CHARS = 14
"""Longest caption of the world: with [CLS] and [SEP] it fits the recipe's text_len of 16."""

EVAL_KINDS = ("attribute", "seen_entity", "heldout_entity")

DEFAULT_N_TRAIN = 6000
DEFAULT_N_VALID = 300
DEFAULT_N_TEST_PROMPTS = 120

_SPLIT_STREAMS = {"train": 1, "valid": 2, "test": 3}


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    center: tuple[float, float]  # (x, y) in pixels of the final image
    size: float  # side of the shape's bounding square, in pixels


@dataclass(frozen=True)
class Example:
    text: str
    scene: Scene
    entity: str | None  # the entity the caption names, None for attribute captions


# ---------------------------------------------------------------------------------------------
# Rendering


def _shape_polygon(shape: str, cx: float, cy: float, half: float) -> list[tuple[float, float]]:
    if shape == "正方形":
        return [
            (cx - half, cy - half),
            (cx + half, cy - half),
            (cx + half, cy + half),
            (cx - half, cy + half),
        ]
    if shape == "三角形":
        return [(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    if shape == "星形":
        points = []
        for k in range(10):
            radius = half if k % 2 == 0 else half * STAR_INNER_RATIO
            angle = -np.pi / 2 + k * np.pi / 5
            points.append((cx + radius * float(np.cos(angle)), cy + radius * float(np.sin(angle))))
        return points
    raise ValueError(f"no polygon for shape {shape!r}")


def random_scene(
    rng: np.random.Generator,
    colour: str,
    shape: str,
    background: str | None = None,
    image_size: int = IMAGE_SIZE,
) -> Scene:
    """A scene with the given colour and shape; background (unless given), size and position drawn from rng."""
    if background is None:
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))].name
    size = float(rng.uniform(MIN_SIZE_FRACTION, MAX_SIZE_FRACTION)) * image_size
    low = MARGIN + size / 2
    high = image_size - MARGIN - size / 2
    cx, cy = (float(v) for v in rng.uniform(low, high, size=2))
    return Scene(colour, shape, background, (cx, cy), size)


def render(
    colour: str,
    shape: str,
    background: str | None = None,
    center: tuple[float, float] | None = None,
    size: float | None = None,
    rng: np.random.Generator | None = None,
    image_size: int = IMAGE_SIZE,
) -> Image.Image:
    """Render one shape. Colour/shape/background are the Chinese names (e.g. "红色", "圆形", "白色").

    ``center`` (x, y) and ``size`` (side of the bounding square) are in pixels of the final image.
    Any of background/center/size left as None is drawn from ``rng`` as ``random_scene`` does.
    """
    if colour not in COLOUR_BY_NAME:
        raise ValueError(f"unknown colour {colour!r}; known: {sorted(COLOUR_BY_NAME)}")
    if shape not in SHAPE_BY_NAME:
        raise ValueError(f"unknown shape {shape!r}; known: {sorted(SHAPE_BY_NAME)}")
    if background is not None and background not in BACKGROUND_BY_NAME:
        raise ValueError(f"unknown background {background!r}; known: {sorted(BACKGROUND_BY_NAME)}")
    if background is None or center is None or size is None:
        if rng is None:
            raise ValueError("background, center and size are required unless an rng is given")
        drawn = random_scene(rng, colour, shape, background, image_size)
        background = drawn.background
        center = drawn.center if center is None else center
        size = drawn.size if size is None else size
    return render_scene(Scene(colour, shape, background, center, size), image_size)


def render_scene(scene: Scene, image_size: int = IMAGE_SIZE) -> Image.Image:
    big = image_size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUND_BY_NAME[scene.background].rgb)
    draw = ImageDraw.Draw(image)
    fill: RGB = COLOUR_BY_NAME[scene.colour].rgb
    cx, cy = (v * SUPERSAMPLE for v in scene.center)
    half = scene.size * SUPERSAMPLE / 2
    if scene.shape == "圆形":
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=fill)
    else:
        draw.polygon(_shape_polygon(scene.shape, cx, cy, half), fill=fill)
    return image.resize((image_size, image_size), Image.Resampling.BOX)


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_base64_image(text: str) -> Image.Image:
    """Decode a base64 (standard or URL-safe) PNG/JPEG into an RGB image."""
    raw = base64.b64decode(text.replace("-", "+").replace("_", "/"))
    with Image.open(io.BytesIO(raw)) as image:
        return image.convert("RGB")


# ---------------------------------------------------------------------------------------------
# Captions


def attribute_caption(template: str, colour: str, shape: str, background: str) -> str:
    return template.format(
        colour=colour,
        shape=shape,
        short=SHAPE_BY_NAME[shape].short,
        background=background,
        mw=SHAPE_MEASURE_WORDS[shape],
    )


def entity_caption(template: str, entity: Entity, background: str) -> str:
    return template.format(entity=entity.name, background=background, mw=MEASURE_WORDS[entity.category])


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def sample_examples(rng: np.random.Generator, n: int, entities: Sequence[Entity]) -> list[Example]:
    """``n`` caption/scene pairs: a share name an entity from ``entities``, the rest name attributes.

    Each caption's phrasing family is drawn from the training families, then a template of it."""
    examples = []
    for _ in range(n):
        if entities and rng.random() < ENTITY_CAPTION_FRACTION:
            entity = _pick(rng, entities)
            scene = random_scene(rng, entity.colour, entity.shape)
            text = entity_caption(_pick(rng, _pick(rng, TRAIN_PHRASINGS).entity), entity, scene.background)
            examples.append(Example(text, scene, entity.name))
        else:
            colour = _pick(rng, COLOURS).name
            shape = _pick(rng, SHAPES).name
            scene = random_scene(rng, colour, shape)
            template = _pick(rng, _pick(rng, TRAIN_PHRASINGS).attribute)
            examples.append(Example(attribute_caption(template, colour, shape, scene.background), scene, None))
    return examples


@dataclass(frozen=True)
class EvalPrompt:
    kind: str  # one of EVAL_KINDS
    prompt: str
    colour: str
    shape: str
    family: str = ""  # the phrasing family (PHRASINGS) it was written in; "" when not known


def eval_prompts() -> list[EvalPrompt]:
    """In every phrasing family: every colour×shape pair, every seen entity, every held-out entity.

    Within a family, templates and backgrounds take turns (fixed order, no randomness)."""
    prompts = []
    for phrasing in PHRASINGS:
        for i, (c, s) in enumerate((c, s) for c in COLOURS for s in SHAPES):
            template = phrasing.attribute[i % len(phrasing.attribute)]
            background = BACKGROUNDS[i % len(BACKGROUNDS)].name
            text = attribute_caption(template, c.name, s.name, background)
            prompts.append(EvalPrompt("attribute", text, c.name, s.name, phrasing.name))
        for kind, entities in (("seen_entity", seen_entities()), ("heldout_entity", held_out_entities())):
            for i, e in enumerate(entities):
                template = phrasing.entity[i % len(phrasing.entity)]
                text = entity_caption(template, e, BACKGROUNDS[i % len(BACKGROUNDS)].name)
                prompts.append(EvalPrompt(kind, text, e.colour, e.shape, phrasing.name))
    return prompts


def sample_test_prompts(rng: np.random.Generator, n: int) -> list[EvalPrompt]:
    """``n`` prompts cycling through the three kinds, each in a family and template drawn from all families."""
    by_kind = {
        "seen_entity": seen_entities(),
        "heldout_entity": held_out_entities(),
    }
    prompts = []
    for i in range(n):
        kind = EVAL_KINDS[i % len(EVAL_KINDS)]
        background = _pick(rng, BACKGROUNDS).name
        phrasing = _pick(rng, PHRASINGS)
        if kind == "attribute":
            colour = _pick(rng, COLOURS).name
            shape = _pick(rng, SHAPES).name
            text = attribute_caption(_pick(rng, phrasing.attribute), colour, shape, background)
        else:
            entity = _pick(rng, by_kind[kind])
            colour, shape = entity.colour, entity.shape
            text = entity_caption(_pick(rng, phrasing.entity), entity, background)
        prompts.append(EvalPrompt(kind, text, colour, shape, phrasing.name))
    return prompts


def all_attribute_captions(phrasings: Sequence[Phrasing] = PHRASINGS) -> list[str]:
    """Every caption the attribute templates of these families can produce."""
    return [
        attribute_caption(template, c.name, s.name, b.name)
        for phrasing in phrasings
        for template in phrasing.attribute
        for c in COLOURS
        for s in SHAPES
        for b in BACKGROUNDS
    ]


def all_entity_captions(phrasings: Sequence[Phrasing] = PHRASINGS) -> list[tuple[Entity, str]]:
    """Every (entity, caption) the entity templates of these families can produce."""
    return [
        (entity, entity_caption(template, entity, b.name))
        for phrasing in phrasings
        for template in phrasing.entity
        for entity in ENTITIES
        for b in BACKGROUNDS
    ]


def check_vocabulary() -> None:
    """Raise if a caption could name an entity it is not about (by substring), or the tables disagree.

    This is what guarantees that held-out entity names never occur in image captions.
    """
    names = [e.name for e in ENTITIES]
    if len(set(names)) != len(names):
        raise ValueError("duplicate entity names")
    for a in names:
        for b in names:
            if a != b and a in b:
                raise ValueError(f"entity name {a!r} is contained in {b!r}")
    for caption in all_attribute_captions():
        inside = [name for name in names if name in caption]
        if inside:
            raise ValueError(f"attribute caption {caption!r} contains entity names {inside}")
    for entity, caption in all_entity_captions():
        inside = [name for name in names if name in caption]
        if inside != [entity.name]:
            raise ValueError(f"entity caption {caption!r} contains entity names {inside}")
    longest = max([*all_attribute_captions(), *(c for _, c in all_entity_captions())], key=len)
    if len(longest) > MAX_CAPTION_CHARS:
        raise ValueError(f"caption {longest!r} is longer than {MAX_CAPTION_CHARS} characters")
    seen_pairs = {(e.colour, e.shape) for e in seen_entities()}
    for e in ENTITIES:
        if e.colour not in COLOUR_BY_NAME or e.shape not in SHAPE_BY_NAME:
            raise ValueError(f"entity {e.name!r} has an attribute outside the world's vocabularies")
        if e.held_out and (e.colour, e.shape) not in seen_pairs:
            raise ValueError(f"held-out entity {e.name!r} has a (colour, shape) pair no seen entity has")


# ---------------------------------------------------------------------------------------------
# Writing


def _tsv(rows: Iterable[Sequence[str]]) -> str:
    return "".join("\t".join(row) + "\n" for row in rows)


def _id_file(names: Sequence[str]) -> str:
    return f"{len(names)}\n" + _tsv((name, str(i)) for i, name in enumerate(names))


@dataclass(frozen=True)
class WorldFiles:
    out_dir: Path
    n_train: int
    n_valid: int
    n_test_prompts: int
    n_entities: int
    n_held_out: int
    n_graph_nodes: int
    n_triples: int

    def path(self, name: str) -> Path:
        return self.out_dir / name


def build_world(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_train: int = DEFAULT_N_TRAIN,
    n_valid: int = DEFAULT_N_VALID,
    n_test_prompts: int = DEFAULT_N_TEST_PROMPTS,
) -> WorldFiles:
    """Write the world's tables and knowledge graph into ``out_dir`` (see the module docstring)."""
    check_vocabulary()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seen = seen_entities()

    for split, n in (("train", n_train), ("valid", n_valid)):
        rng = np.random.default_rng([seed, _SPLIT_STREAMS[split]])
        rows = [
            (str(i), ex.text, png_base64(render_scene(ex.scene)))
            for i, ex in enumerate(sample_examples(rng, n, seen))
        ]
        write_text_atomic(out / f"{split}.tsv", _tsv(rows))

    rng = np.random.default_rng([seed, _SPLIT_STREAMS["test"]])
    write_text_atomic(
        out / "test.tsv",
        _tsv((str(i), p.prompt) for i, p in enumerate(sample_test_prompts(rng, n_test_prompts))),
    )
    write_text_atomic(
        out / "eval_prompts.tsv",
        _tsv(
            [("kind", "prompt", "colour", "shape", "family")]
            + [(p.kind, p.prompt, p.colour, p.shape, p.family) for p in eval_prompts()]
        ),
    )

    triples = build_triples()
    nodes = graph_nodes(triples)
    relations = graph_relations(triples)
    write_text_atomic(out / "triples.tsv", _tsv(triples))
    write_text_atomic(out / "entity2id.txt", _id_file(nodes))
    write_text_atomic(out / "relation2id.txt", _id_file(relations))

    files = WorldFiles(
        out_dir=out,
        n_train=n_train,
        n_valid=n_valid,
        n_test_prompts=n_test_prompts,
        n_entities=len(ENTITIES),
        n_held_out=len(held_out_entities()),
        n_graph_nodes=len(nodes),
        n_triples=len(triples),
    )
    manifest = {
        "seed": seed,
        "image_size": IMAGE_SIZE,
        "colours": [asdict(c) for c in COLOURS],
        "backgrounds": [asdict(b) for b in BACKGROUNDS],
        "shapes": [asdict(s) for s in SHAPES],
        "entities": [asdict(e) for e in ENTITIES],
        "held_out": [e.name for e in held_out_entities()],
        "phrasings": [asdict(p) for p in PHRASINGS],
        "relations": relations,
        "counts": {k: v for k, v in asdict(files).items() if k != "out_dir"},
    }
    write_text_atomic(out / "entities.json", json.dumps(manifest, ensure_ascii=False, indent=1) + "\n")
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_train", type=int, default=DEFAULT_N_TRAIN)
    parser.add_argument("--n_valid", type=int, default=DEFAULT_N_VALID)
    parser.add_argument("--n_test_prompts", type=int, default=DEFAULT_N_TEST_PROMPTS)
    args = parser.parse_args(argv)
    for flag in ("n_train", "n_valid", "n_test_prompts"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag} must be >= 0")
    files = build_world(args.out, args.seed, args.n_train, args.n_valid, args.n_test_prompts)
    print(
        f"wrote {files.out_dir}: {files.n_train} train, {files.n_valid} valid, {files.n_test_prompts} test prompts; "
        f"{files.n_entities} entities ({files.n_held_out} held out), {files.n_graph_nodes} graph nodes, "
        f"{files.n_triples} triples"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
