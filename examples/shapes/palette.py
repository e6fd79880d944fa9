"""The vocabularies of the shapes world: shape colours, backgrounds, shapes.

Colours are chosen far apart in RGB, and every shape colour is far from every background, so that a
shape on any background is unambiguous even after blur or lossy compression.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]

IMAGE_SIZE = 64
"""Side of every image of the world, in pixels."""


@dataclass(frozen=True)
class Colour:
    name: str  # the Chinese word used in captions and in the knowledge graph, e.g. "红色"
    english: str
    rgb: RGB


@dataclass(frozen=True)
class Shape:
    name: str  # the Chinese word used in captions and in the knowledge graph, e.g. "圆形"
    short: str  # the short form used by terse captions, e.g. "圆" in "红色的圆"
    english: str
    corners: str  # value of the 角的数量 relation in the knowledge graph


COLOURS: tuple[Colour, ...] = (
    Colour("红色", "red", (215, 35, 35)),
    Colour("橙色", "orange", (245, 135, 25)),
    Colour("黄色", "yellow", (245, 215, 30)),
    Colour("绿色", "green", (40, 170, 60)),
    Colour("蓝色", "blue", (35, 85, 215)),
    Colour("紫色", "purple", (145, 55, 185)),
)

BACKGROUNDS: tuple[Colour, ...] = (
    Colour("白色", "white", (255, 255, 255)),
    Colour("黑色", "black", (0, 0, 0)),
    Colour("灰色", "grey", (128, 128, 128)),
)

SHAPES: tuple[Shape, ...] = (
    Shape("圆形", "圆", "circle", "零个角"),
    Shape("正方形", "方块", "square", "四个角"),
    Shape("三角形", "三角", "triangle", "三个角"),
    Shape("星形", "星", "star", "五个角"),
)

COLOUR_BY_NAME: dict[str, Colour] = {c.name: c for c in COLOURS}
BACKGROUND_BY_NAME: dict[str, Colour] = {c.name: c for c in BACKGROUNDS}
SHAPE_BY_NAME: dict[str, Shape] = {s.name: s for s in SHAPES}


def rgb_distance(a: RGB, b: RGB) -> float:
    return float(sum((int(x) - int(y)) ** 2 for x, y in zip(a, b, strict=True)) ** 0.5)


def min_colour_background_distance() -> float:
    """Smallest RGB distance between any shape colour and any background."""
    return min(rgb_distance(c.rgb, b.rgb) for c in COLOURS for b in BACKGROUNDS)
