# Copyright (c) det_ext authors.
"""LT-Shapes: the embedded, deterministic, long-tailed instance-segmentation world."""
from .generator import frequency_group, generate_lt_shapes, lt_shapes_dir
from .spec import LTShapesSpec, plan_instance_counts
from .vocabulary import CategorySpec, build_categories, pluralize

__all__ = [
    "LTShapesSpec", "CategorySpec", "generate_lt_shapes", "lt_shapes_dir", "plan_instance_counts",
    "build_categories", "frequency_group", "pluralize",
]
