# Copyright (c) det_ext authors.
"""The LT-Shapes vocabulary: shapes, colours, category names, synonyms and plural forms.

A category is a (shape, colour, texture) triple named like ``"dark blue ring"`` or
``"striped green square"``. Categories are ordered by frequency rank: rank 0 is the most frequent.
The rarest categories are built as *twins* of frequent ones (same shape, near colour), so that a
detector trained on the long tail confuses them with their head twin.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

__all__ = ["Colour", "Shape", "CategorySpec", "SHAPES", "COLOURS", "build_categories", "pluralize"]


@dataclasses.dataclass(frozen=True)
class Colour:
    """A named RGB colour with its synonyms (used in names and captions)."""

    name: str
    rgb: Tuple[int, int, int]
    synonyms: Tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Shape:
    """A drawable shape with its synonyms and an irregular plural (if any)."""

    name: str
    synonyms: Tuple[str, ...] = ()
    plural: str = ""


SHAPES: Dict[str, Shape] = {
    s.name: s
    for s in [
        Shape("circle", ("disc", "dot")),
        Shape("square", ("box", "block"), plural="squares"),
        Shape("triangle", ("trigon",)),
        Shape("ring", ("annulus", "hoop")),
        Shape("star", ("asterisk",)),
        Shape("cross", ("plus sign",), plural="crosses"),
        Shape("diamond", ("rhombus", "lozenge")),
        Shape("hexagon", ("hex",)),
        Shape("bar", ("stripe", "strip")),
        Shape("arrow", ("pointer",)),
    ]
}

# Head colours first; "near" colours (the twins) are listed in NEAR_COLOURS.
COLOURS: Dict[str, Colour] = {
    c.name: c
    for c in [
        Colour("red", (214, 39, 40), ("scarlet",)),
        Colour("blue", (31, 90, 220), ("azure",)),
        Colour("green", (44, 170, 44), ("emerald",)),
        Colour("yellow", (240, 210, 30), ("golden",)),
        Colour("purple", (140, 60, 190), ("violet",)),
        Colour("orange", (250, 130, 20), ("amber",)),
        Colour("cyan", (30, 200, 210), ("turquoise",)),
        Colour("pink", (245, 120, 190), ("rose",)),
        Colour("white", (235, 235, 235), ("ivory",)),
        Colour("brown", (130, 80, 40), ("chocolate",)),
        # near colours of the head colours
        Colour("dark red", (140, 20, 30), ("maroon",)),
        Colour("dark blue", (20, 40, 130), ("navy",)),
        Colour("light green", (140, 225, 120), ("lime",)),
        Colour("dark yellow", (190, 160, 20), ("mustard",)),
        Colour("light purple", (190, 140, 230), ("lavender",)),
        Colour("dark orange", (200, 90, 10), ("rust",)),
    ]
}

NEAR_COLOURS: Dict[str, str] = {
    "red": "dark red",
    "blue": "dark blue",
    "green": "light green",
    "yellow": "dark yellow",
    "purple": "light purple",
    "orange": "dark orange",
}

TEXTURES: Tuple[str, ...] = ("plain", "striped")


@dataclasses.dataclass(frozen=True)
class CategorySpec:
    """One LT-Shapes category.

    Attributes:
        name (str): canonical name, e.g. ``"dark blue ring"``.
        shape (str): key of :data:`SHAPES`.
        colour (str): key of :data:`COLOURS`.
        texture (str): ``"plain"`` or ``"striped"``.
        twin_of (str): name of the head category this one is confusable with, or ``""``.
    """

    name: str
    shape: str
    colour: str
    texture: str = "plain"
    twin_of: str = ""

    @property
    def rgb(self) -> Tuple[int, int, int]:
        return COLOURS[self.colour].rgb

    def surface_forms(self) -> Tuple[List[str], List[str]]:
        """Returns (singular forms, plural forms): canonical name first, then synonyms."""
        colour = COLOURS[self.colour]
        shape = SHAPES[self.shape]
        prefix = "striped " if self.texture == "striped" else ""
        singulars = []
        for col in (colour.name,) + colour.synonyms:
            for shp in (shape.name,) + shape.synonyms:
                singulars.append(f"{prefix}{col} {shp}")
        plurals = [pluralize(s) for s in singulars]
        return singulars, plurals

    def synonyms(self) -> List[str]:
        """LVIS-style synonyms: the canonical name first, then the alternatives (singular)."""
        return self.surface_forms()[0]


def pluralize(phrase: str) -> str:
    """English plural of the head noun (the last word) of ``phrase``.

    Args:
        phrase (str): e.g. ``"dark blue cross"``.

    Returns:
        str: e.g. ``"dark blue crosses"``.
    """
    words = phrase.split(" ")
    head = words[-1]
    irregular = {s.name: s.plural for s in SHAPES.values() if s.plural}
    if head in irregular:
        words[-1] = irregular[head]
    elif head.endswith(("s", "x", "sh", "ch")):
        words[-1] = head + "es"
    elif head == "sign":
        words[-1] = "signs"
    else:
        words[-1] = head + "s"
    return " ".join(words)


def build_categories(num_categories: int, num_twins: int) -> List[CategorySpec]:
    """Builds the category list in frequency-rank order (rank 0 = most frequent).

    The first ``num_categories - num_twins`` categories are distinct (shape, colour) pairs with head
    colours, cycling shapes fastest so that frequent classes differ in shape and colour. The last
    ``num_twins`` categories are twins of the most frequent categories whose colour has a near
    colour: same shape (and texture), near colour. Every 7th non-twin category is striped.

    Args:
        num_categories (int): total number of categories (>= 4 and <= 80).
        num_twins (int): number of rare twin categories (< num_categories / 2).

    Returns:
        list[CategorySpec]: categories in rank order; names are unique.
    """
    if not 4 <= num_categories <= 80:
        raise ValueError(f"num_categories must be in [4, 80], got {num_categories}")
    if not 0 <= num_twins < num_categories / 2:
        raise ValueError(f"num_twins must be in [0, num_categories / 2), got {num_twins}")
    head_colours: Sequence[str] = [c for c in COLOURS if c not in NEAR_COLOURS.values()]
    shapes = list(SHAPES)
    base: List[CategorySpec] = []
    i = 0
    while len(base) < num_categories - num_twins:
        shape = shapes[i % len(shapes)]
        colour = head_colours[(i + i // len(shapes)) % len(head_colours)]
        texture = "striped" if i % 7 == 6 else "plain"
        prefix = "striped " if texture == "striped" else ""
        name = f"{prefix}{colour} {shape}"
        if all(c.name != name for c in base):
            base.append(CategorySpec(name, shape, colour, texture))
        i += 1
    twins: List[CategorySpec] = []
    for head in base:
        if len(twins) == num_twins:
            break
        if head.colour in NEAR_COLOURS:
            near = NEAR_COLOURS[head.colour]
            prefix = "striped " if head.texture == "striped" else ""
            twins.append(
                CategorySpec(f"{prefix}{near} {head.shape}", head.shape, near, head.texture,
                             head.name)
            )
    if len(twins) < num_twins:
        raise ValueError(f"cannot build {num_twins} twins from {len(base)} base categories")
    return base + twins
