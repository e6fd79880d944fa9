"""Read the colour and shape of the single shape in an image of the shapes world, without a learned model.

1. Background: the per-channel median of the image border (two pixels wide).
2. Foreground: pixels whose RGB distance from that background exceeds half the smallest distance
   between any shape colour and any background give a rough region and, from its interior, the
   foreground colour; the final mask keeps the pixels past the midpoint between background and
   foreground colour. In both steps the largest 4-connected region is kept and its holes are filled
   (robust to speckles and to blotches inside a decoded shape).
3. Colour: the palette colour whose blends with the background best explain the foreground pixels
   (median distance of the pixels from the segment background → colour), so blurred pixels that
   mix the shape colour with the background count for the right colour.
4. Shape: three scale-invariant features of the region — fill (area / bounding-box area), solidity
   (area / convex-hull area) and vertical balance (bottom-half mass minus top-half mass, over the
   area) — compared with prototypes measured on the world's own renderer; nearest prototype wins.
   Confidence is ``1 - d_best / d_second`` (0: a tie, 1: exactly on a prototype). The shape is None
   when there is no foreground region or the best prototype is still far away.

The reader accepts a PIL image or a uint8 array (H, W, 3); the world's images are 64×64, larger ones
(e.g. a 256×256 decoder output) are box-downsampled to 64×64 first. To score generated images against
their prompts, see ``examples.shapes.evaluate``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .palette import COLOURS, IMAGE_SIZE, SHAPES, min_colour_background_distance
from .world import MAX_SIZE_FRACTION, MIN_SIZE_FRACTION, render

BORDER_WIDTH = 2
"""Width in pixels of the image border sampled to estimate the background colour."""

FOREGROUND_THRESHOLD = min_colour_background_distance() / 2
"""RGB distance from the background above which a pixel counts as foreground."""

MIDPOINT = 0.5
"""A pixel is foreground when it lies past this point on the way from background to foreground colour."""

MIN_AREA_FRACTION = 0.015
"""A foreground region smaller than this share of the image is not a shape (the smallest star is ~6%)."""

RADIAL_BINS = 60
"""Angular bins of the outline radius profile."""

LOBE_HARMONICS = (3, 4, 5)

FEATURE_SCALES = np.array([0.1, 0.1, 0.1, 0.03, 0.03, 0.03, 0.1])
"""Feature differences (fill, solidity, balance, lobes 3/4/5, aspect) that count as one unit of distance."""

MAX_PROTOTYPE_DISTANCE = 5.5
"""Regions farther than this from every prototype (in scaled units) have no clear shape."""

_PROTOTYPE_SIZES = 5
"""Number of sizes between the world's smallest and largest shape rendered to measure a prototype."""


@dataclass(frozen=True)
class ShapeFeatures:
    fill: float  # area / bounding-box area: circle ≈ 0.79, square ≈ 1, triangle ≈ 0.5, star ≈ 0.35
    solidity: float  # area / convex-hull area: ≈ 1 for convex shapes, ≈ 0.5 for the star
    balance: float  # (bottom-half area - top-half area) / area: ≈ 0.5 for an upright triangle
    lobes3: float  # relative strength of the 3-fold, 4-fold and 5-fold harmonics of the radius
    lobes4: float  # around the centroid: a triangle, a square and a star each peak in one of them
    lobes5: float
    aspect: float  # bounding-box short side / long side: ≈ 1 for every shape of the world

    def vector(self) -> np.ndarray:
        return np.array(
            [self.fill, self.solidity, self.balance, self.lobes3, self.lobes4, self.lobes5, self.aspect]
        )


@dataclass(frozen=True)
class Attributes:
    colour: str | None  # nearest palette colour of the foreground; None when there is no foreground
    shape: str | None  # None when there is no clear shape
    confidence: float | None  # shape confidence in [0, 1]; None when shape is None
    features: ShapeFeatures | None = None


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3); images larger than the world's are box-downsampled to IMAGE_SIZE×IMAGE_SIZE."""
    if not isinstance(image, Image.Image):
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"expected an RGB array of shape (H, W, 3), got {array.shape}")
        image = Image.fromarray(array.astype(np.uint8, copy=False))
    image = image.convert("RGB")
    if max(image.size) > IMAGE_SIZE:
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.uint8)


def estimate_background(pixels: np.ndarray) -> np.ndarray:
    border = np.concatenate(
        [
            pixels[:BORDER_WIDTH].reshape(-1, 3),
            pixels[-BORDER_WIDTH:].reshape(-1, 3),
            pixels[:, :BORDER_WIDTH].reshape(-1, 3),
            pixels[:, -BORDER_WIDTH:].reshape(-1, 3),
        ]
    )
    return np.median(border.astype(np.float64), axis=0)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """4-neighbourhood dilation."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


def _flood(passable: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Pixels reachable from the ``seeds`` mask through 4-connected ``passable`` pixels."""
    reached = seeds & passable
    while True:
        grown = _dilate(reached) & passable
        if np.array_equal(grown, reached):
            return reached
        reached = grown


def _border(shape: tuple[int, ...]) -> np.ndarray:
    border = np.zeros(shape, dtype=bool)
    border[0] = border[-1] = True
    border[:, 0] = border[:, -1] = True
    return border


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of ``mask``, holes filled."""
    remaining = mask.copy()
    best = np.zeros_like(mask, dtype=bool)
    best_area = 0
    while int(remaining.sum()) > best_area:
        seed = np.zeros_like(mask, dtype=bool)
        seed[tuple(np.argwhere(remaining)[0])] = True
        region = _flood(remaining, seed)
        remaining &= ~region
        area = int(region.sum())
        if area > best_area:
            best, best_area = region, area
    return ~_flood(~best, _border(mask.shape))


def foreground_mask(pixels: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The shape's mask and its colour (None when nothing stands out from the background).

    A first mask (far from the background) gives the foreground colour from its interior; the final
    mask keeps the pixels that are nearer the foreground colour than the background along the line
    between them, so blur moves no edge and ringing around the shape does not count.
    """
    values = pixels.astype(np.float64)
    rough = largest_region(np.linalg.norm(values - background, axis=2) > FOREGROUND_THRESHOLD)
    if not rough.any():
        return rough, None
    interior = _erode(rough)
    core = interior if interior.any() else rough
    foreground = np.median(values[core], axis=0)
    axis = foreground - background
    position = (values - background) @ axis / float(axis @ axis)
    return largest_region(position > MIDPOINT), foreground


def _erode(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, constant_values=False)
    return padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def _convex_hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of integer points (N, 2), by Andrew's monotone chain."""
    pts = sorted({(int(x), int(y)) for x, y in points})
    if len(pts) < 3:
        return 0.0

    def cross(o: tuple[int, int], a: tuple[int, int], b: tuple[int, int]) -> int:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[int, int]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[int, int]] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = np.array(lower[:-1] + upper[:-1], dtype=np.float64)
    x, y = hull[:, 0], hull[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def shape_features(mask: np.ndarray) -> ShapeFeatures:
    """Features of a non-empty foreground mask; pixels are unit squares (their corners span the hull)."""
    ys, xs = np.nonzero(mask)
    area = float(len(ys))
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    fill = area / float((bottom - top) * (right - left))
    edge = mask & ~_erode(mask)
    ey, ex = np.nonzero(edge)
    corners = np.concatenate([np.stack([ex + dx, ey + dy], axis=1) for dx in (0, 1) for dy in (0, 1)])
    solidity = area / max(_convex_hull_area(corners), area)
    middle = (top + bottom) / 2
    row_centres = ys + 0.5
    balance = (float(np.sum(row_centres > middle)) - float(np.sum(row_centres < middle))) / area
    lobes = _radial_harmonics(ys + 0.5, xs + 0.5)
    height, width = float(bottom - top), float(right - left)
    aspect = min(height, width) / max(height, width)
    return ShapeFeatures(fill, solidity, balance, *lobes, aspect)


def _radial_harmonics(ys: np.ndarray, xs: np.ndarray) -> list[float]:
    """Magnitudes of harmonics LOBE_HARMONICS of the outline radius r(angle), over the mean radius.

    r(angle) is the farthest foreground pixel from the centroid within each angular bin; empty bins
    (possible for tiny regions) are interpolated from their neighbours.
    """
    dy, dx = ys - ys.mean(), xs - xs.mean()
    radius = np.hypot(dx, dy)
    bins = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * RADIAL_BINS).astype(int) % RADIAL_BINS
    profile = np.full(RADIAL_BINS, np.nan)
    np.fmax.at(profile, bins, radius)
    present = ~np.isnan(profile)
    if not present.all():
        index = np.arange(RADIAL_BINS)
        profile = np.interp(index, index[present], profile[present], period=RADIAL_BINS)
    spectrum = np.abs(np.fft.rfft(profile)) / (RADIAL_BINS * profile.mean())
    return [float(spectrum[k]) for k in LOBE_HARMONICS]


@functools.lru_cache(maxsize=1)
def shape_prototypes() -> dict[str, np.ndarray]:
    """Mean features of each shape rendered by the world at sizes spanning the world's range."""
    centre = (IMAGE_SIZE / 2, IMAGE_SIZE / 2)
    fractions = np.linspace(MIN_SIZE_FRACTION, MAX_SIZE_FRACTION, _PROTOTYPE_SIZES)
    colour, background = COLOURS[0].name, "白色"
    prototypes = {}
    for shape in SHAPES:
        vectors = []
        for fraction in fractions:
            pixels = _as_array(render(colour, shape.name, background, centre, float(fraction) * IMAGE_SIZE))
            mask, _ = foreground_mask(pixels, estimate_background(pixels))
            vectors.append(shape_features(mask).vector())
        prototypes[shape.name] = np.mean(vectors, axis=0)
    return prototypes


def classify_shape(features: ShapeFeatures) -> tuple[str | None, float | None]:
    prototypes = shape_prototypes()
    names = list(prototypes)
    distances = np.array(
        [float(np.linalg.norm((features.vector() - prototypes[n]) / FEATURE_SCALES)) for n in names]
    )
    order = np.argsort(distances)
    best, second = distances[order[0]], distances[order[1]]
    if best > MAX_PROTOTYPE_DISTANCE:
        return None, None
    confidence = 1.0 - best / second if second > 0 else 0.0
    return names[int(order[0])], float(confidence)


def blended_colour(values: np.ndarray, background: np.ndarray) -> str:
    """The palette colour whose blends with the background best explain the pixels ``values`` (N, 3).

    A blurred edge pixel is a mix ``background + a * (colour - background)``: it lies on the segment
    from the background to the true colour, while it may be nearer another palette colour itself.
    The colour with the smallest median distance from its segment wins.
    """
    offsets = values - background
    costs = []
    for colour in COLOURS:
        direction = np.array(colour.rgb, dtype=np.float64) - background
        along = np.clip(offsets @ direction / float(direction @ direction), 0.0, 1.0)
        residual = offsets - along[:, None] * direction
        costs.append(float(np.median(np.linalg.norm(residual, axis=1))))
    return COLOURS[int(np.argmin(costs))].name


def read_attributes(image: Image.Image | np.ndarray) -> Attributes:
    """The colour and shape of the one shape in ``image`` (see the module docstring)."""
    pixels = _as_array(image)
    background = estimate_background(pixels)
    mask, foreground = foreground_mask(pixels, background)
    if foreground is None or int(mask.sum()) < MIN_AREA_FRACTION * mask.size:
        return Attributes(None, None, None)
    colour = blended_colour(pixels[mask].astype(np.float64), background)
    features = shape_features(mask)
    shape, confidence = classify_shape(features)
    return Attributes(colour, shape, confidence, features)
