# Copyright (c) det_ext authors.
"""Rasterisation of LT-Shapes images: textured, cluttered backgrounds and shape instances.

Everything is drawn with exact binary masks; occlusion follows drawing order (later instances are
on top), so an instance's annotation mask is its visible part.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .vocabulary import CategorySpec

__all__ = ["Placement", "shape_mask", "render_background", "paint_instance"]


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where and how one instance is drawn.

    Attributes:
        cx, cy (float): centre in pixels.
        radius (float): circumradius in pixels.
        angle (float): rotation in radians.
    """

    cx: float
    cy: float
    radius: float
    angle: float


def _polygon(points: Sequence[Tuple[float, float]], p: Placement) -> List[Tuple[float, float]]:
    """Scales unit-radius ``points`` by ``p.radius``, rotates by ``p.angle`` and moves to the
    centre."""
    c, s = math.cos(p.angle), math.sin(p.angle)
    r = p.radius
    return [(p.cx + r * (x * c - y * s), p.cy + r * (x * s + y * c)) for x, y in points]


def _regular(n: int, phase: float = 0.0) -> List[Tuple[float, float]]:
    return [
        (math.cos(phase + 2 * math.pi * i / n), math.sin(phase + 2 * math.pi * i / n))
        for i in range(n)
    ]


def _star() -> List[Tuple[float, float]]:
    pts = []
    for i in range(10):
        rad = 1.0 if i % 2 == 0 else 0.45
        a = -math.pi / 2 + math.pi * i / 5
        pts.append((rad * math.cos(a), rad * math.sin(a)))
    return pts


_W = 0.36  # half-width of the arms of a cross / height of a bar
_UNIT_POLYGONS = {
    "square": _regular(4, math.pi / 4),
    "triangle": _regular(3, -math.pi / 2),
    "star": _star(),
    "cross": [
        (-_W, -1), (_W, -1), (_W, -_W), (1, -_W), (1, _W), (_W, _W),
        (_W, 1), (-_W, 1), (-_W, _W), (-1, _W), (-1, -_W), (-_W, -_W),
    ],
    "diamond": [(0, -1), (0.62, 0), (0, 1), (-0.62, 0)],
    "hexagon": _regular(6),
    "bar": [(-1, -_W), (1, -_W), (1, _W), (-1, _W)],
    "arrow": [(-1, -0.22), (0.25, -0.22), (0.25, -0.6), (1, 0), (0.25, 0.6), (0.25, 0.22),
              (-1, 0.22)],
}


def shape_mask(shape: str, placement: Placement, height: int, width: int) -> np.ndarray:
    """Binary mask of one shape.

    Args:
        shape (str): a key of :data:`~det_ext.data.lt_shapes.vocabulary.SHAPES`.
        placement (Placement): centre, radius and rotation.
        height, width (int): image size.

    Returns:
        np.ndarray: bool array of shape (height, width).
    """
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    p = placement
    if shape in ("circle", "ring"):
        draw.ellipse([p.cx - p.radius, p.cy - p.radius, p.cx + p.radius, p.cy + p.radius], fill=1)
        if shape == "ring":
            inner = 0.55 * p.radius
            draw.ellipse([p.cx - inner, p.cy - inner, p.cx + inner, p.cy + inner], fill=0)
    elif shape in _UNIT_POLYGONS:
        draw.polygon(_polygon(_UNIT_POLYGONS[shape], p), fill=1)
    else:
        raise KeyError(f"unknown LT-Shapes shape '{shape}'")
    return np.asarray(canvas, dtype=bool)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled random field in [0, 1], shape (height, width)."""
    coarse = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def render_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A textured, cluttered background in muted colours.

    One of three textures (smooth noise, stripes, checkerboard) in two low-saturation colours, with
    pixel noise and a few grey clutter lines and blobs that belong to no category.

    Returns:
        np.ndarray: float32 RGB image of shape (height, width, 3) with values in [0, 255].
    """
    base = rng.uniform(70, 170, size=3)
    other = np.clip(base + rng.uniform(-45, 45, size=3), 40, 200)
    grey = base.mean()
    base = 0.6 * grey + 0.4 * base  # desaturate so backgrounds never look like category colours
    other = 0.6 * other.mean() + 0.4 * other
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == 0:
        t = _smooth_noise(rng, height, width, int(rng.integers(3, 9)))
    elif kind == 1:
        a = rng.uniform(0, math.pi)
        period = rng.uniform(6, 20)
        t = 0.5 + 0.5 * np.sin((xx * math.cos(a) + yy * math.sin(a)) * 2 * math.pi / period)
    else:
        cell = int(rng.integers(8, 24))
        t = ((xx // cell + yy // cell) % 2).astype(np.float32) * 0.8 + 0.1
    img = base[None, None, :] * (1 - t[..., None]) + other[None, None, :] * t[..., None]
    img += rng.normal(0, 6, size=(height, width, 1)).astype(np.float32)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(2, 7))):
        g = int(rng.uniform(40, 210))
        pts = [tuple(rng.uniform(0, [width, height])) for _ in range(2)]
        if rng.random() < 0.6:
            draw.line(pts, fill=(g, g, g), width=int(rng.integers(1, 3)))
        else:
            (x, y), r = pts[0], rng.uniform(1.5, 4)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(g, g, g))
    return np.asarray(pil, dtype=np.float32)


def paint_instance(
    image: np.ndarray, mask: np.ndarray, category: CategorySpec, rng: np.random.Generator
) -> None:
    """Paints one instance in place: its colour with jitter, shading and (optionally) stripes.

    Args:
        image (np.ndarray): float32 (H, W, 3) image, modified in place.
        mask (np.ndarray): bool (H, W) full mask of the instance.
        category (CategorySpec): what to draw.
        rng (np.random.Generator): source of the colour jitter.
    """
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return
    colour = np.asarray(category.rgb, dtype=np.float32) + rng.normal(0, 7, size=3)
    # Linear shading across the instance, like a soft light source.
    a = rng.uniform(0, 2 * math.pi)
    proj = xs * math.cos(a) + ys * math.sin(a)
    span = max(float(proj.max() - proj.min()), 1.0)
    shade = 1.0 + rng.uniform(0.0, 0.18) * ((proj - proj.min()) / span - 0.5)
    pixels = colour[None, :] * shade[:, None]
    if category.texture == "striped":
        b = rng.uniform(0, math.pi)
        stripe = ((xs * math.cos(b) + ys * math.sin(b)) // 3).astype(int) % 2 == 1
        pixels[stripe] = 0.35 * pixels[stripe] + 0.65 * 240.0
    pixels += rng.normal(0, 4, size=pixels.shape)
    image[ys, xs] = np.clip(pixels, 0, 255)
