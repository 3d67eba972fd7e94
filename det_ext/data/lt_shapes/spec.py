# Copyright (c) det_ext authors.
"""Parameters of an LT-Shapes world and its long-tailed instance-count plan."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Dict, List

import numpy as np

from .vocabulary import CategorySpec, build_categories

__all__ = ["LTShapesSpec", "plan_instance_counts"]

# Bump when the generator's output changes for the same parameters (invalidates caches).
GENERATOR_VERSION = 1


@dataclasses.dataclass(frozen=True)
class LTShapesSpec:
    """All parameters that determine an LT-Shapes world; equal specs give identical datasets.

    Attributes:
        seed (int): random seed of the world.
        image_size (int): images are square, ``image_size`` pixels wide.
        num_train_images (int): images in the training split.
        num_val_images (int): images in the validation split.
        num_categories (int): number of categories (4..80).
        num_twins (int): rare categories built as near-colour twins of head categories.
        tail_steepness (float): exponent gamma of the long tail: the log instance count falls as
            (rank / (C - 1)) ** gamma from the head to 1 instance; smaller is steeper at the head.
        instances_per_image (float): mean number of instances per training image.
        min_val_instances (int): every category has at least this many validation instances.
        captions_per_image (int): captions written for each image.
    """

    seed: int = 0
    image_size: int = 128
    num_train_images: int = 2500
    num_val_images: int = 400
    num_categories: int = 30
    num_twins: int = 8
    tail_steepness: float = 0.5
    instances_per_image: float = 5.5
    min_val_instances: int = 25
    captions_per_image: int = 2

    def __post_init__(self) -> None:
        checks = {
            "image_size": self.image_size >= 48,
            "num_train_images": self.num_train_images >= 1,
            "num_val_images": self.num_val_images >= 1,
            "tail_steepness": self.tail_steepness > 0,
            "instances_per_image": 1.0 <= self.instances_per_image <= 12.0,
            "min_val_instances": self.min_val_instances >= 1,
            "captions_per_image": self.captions_per_image >= 1,
        }
        for field, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"LTShapesSpec.{field} has an invalid value: {getattr(self, field)}")
        build_categories(self.num_categories, self.num_twins)  # validates both counts

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["generator_version"] = GENERATOR_VERSION
        return d

    def digest(self) -> str:
        """Short hash of every parameter (and the generator version): the cache key."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def categories(self) -> List[CategorySpec]:
        return build_categories(self.num_categories, self.num_twins)


def plan_instance_counts(spec: LTShapesSpec) -> Dict[str, np.ndarray]:
    """Target instance counts per category (in rank order) for both splits.

    Training counts follow ``n_k = n_head * n_head ** (-(k / (C - 1)) ** gamma)``, ending at one
    instance for the rarest category, with ``n_head`` scaled so that the total is about
    ``num_train_images * instances_per_image``. Validation counts are proportional to the square
    root of the training counts (flatter, as in LVIS val), with at least ``min_val_instances`` each.

    Returns:
        dict: ``{"train": int array (C,), "val": int array (C,)}``.
    """
    c = spec.num_categories
    ranks = np.arange(c) / max(c - 1, 1)
    shape = ranks**spec.tail_steepness  # 0 at the head, 1 at the tail
    total = spec.num_train_images * spec.instances_per_image
    # Solve sum_k n_head ** (1 - shape_k) = total for n_head by bisection on log n_head.
    lo, hi = 0.0, np.log(total) + 1.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if np.exp(mid * (1 - shape)).sum() > total:
            hi = mid
        else:
            lo = mid
    train = np.maximum(np.round(np.exp(lo * (1 - shape))), 1).astype(np.int64)
    val_total = spec.num_val_images * min(spec.instances_per_image, 6.0)
    root = np.sqrt(train)
    val = np.maximum(np.round(root * val_total / root.sum()), spec.min_val_instances)
    return {"train": train, "val": val.astype(np.int64)}
