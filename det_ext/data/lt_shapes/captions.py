# Copyright (c) det_ext authors.
"""Natural-language captions for LT-Shapes images ("two red triangles next to a dark blue ring")."""
from __future__ import annotations

from collections import Counter
from typing import List, Sequence

import numpy as np

from .vocabulary import CategorySpec

__all__ = ["caption_image", "count_phrase"]

_NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
_RELATIONS = ("next to", "beside", "near", "and", "with", "above", "below")
_TEMPLATES = (
    "{objects}",
    "a picture of {objects}",
    "there are {objects} on a patterned background",
    "an image showing {objects}",
    "{objects} in a cluttered scene",
)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def count_phrase(count: int, singular: str, plural: str) -> str:
    """``"a red circle"``, ``"an orange star"``, ``"three red circles"``, ``"many red circles"``."""
    if count == 1:
        return f"{_article(singular)} {singular}"
    return f"{_NUMBERS.get(count, 'many')} {plural}"


def _join(phrases: Sequence[str], rng: np.random.Generator) -> str:
    if len(phrases) == 1:
        return phrases[0]
    if len(phrases) == 2:
        return f"{phrases[0]} {_RELATIONS[int(rng.integers(len(_RELATIONS)))]} {phrases[1]}"
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption_image(
    categories: Sequence[CategorySpec],
    instance_labels: Sequence[int],
    num_captions: int,
    rng: np.random.Generator,
) -> List[str]:
    """Captions naming the objects of one image.

    The first caption names every category present with its count; the following ones name a random
    subset of one to three categories. Surface forms are the canonical name (70%) or a synonym, in
    the plural when the count is above one.

    Args:
        categories (Sequence[CategorySpec]): the world's categories, indexed by label.
        instance_labels (Sequence[int]): label of each instance of the image.
        num_captions (int): how many captions to return.
        rng (np.random.Generator): random source.

    Returns:
        list[str]: ``num_captions`` captions (empty strings never occur when there are instances).
    """
    counts = Counter(int(x) for x in instance_labels)
    labels = sorted(counts, key=lambda k: (-counts[k], k))
    captions: List[str] = []
    for i in range(num_captions):
        if not labels:
            captions.append("an empty patterned background")
            continue
        if i == 0:
            chosen = list(labels)
        else:
            size = int(rng.integers(1, min(3, len(labels)) + 1))
            chosen = list(rng.choice(labels, size=size, replace=False))
        phrases = []
        for label in chosen:
            singulars, plurals = categories[label].surface_forms()
            j = 0 if rng.random() < 0.7 else int(rng.integers(len(singulars)))
            phrases.append(count_phrase(counts[label], singulars[j], plurals[j]))
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        captions.append(template.format(objects=_join(phrases, rng)))
    return captions
