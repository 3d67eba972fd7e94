# Copyright (c) det_ext authors.
"""Data: the LT-Shapes world, dataset registration and per-class training statistics."""
from .class_stats import ClassStatistics, get_class_statistics
from .datasets import (
    prepare_datasets,
    register_all_builtin,
    register_lt_shapes,
    register_lvis_format_dataset,
)
from .lt_shapes import LTShapesSpec, generate_lt_shapes

register_all_builtin()

__all__ = [
    "ClassStatistics", "get_class_statistics", "prepare_datasets", "register_lt_shapes",
    "register_lvis_format_dataset", "LTShapesSpec", "generate_lt_shapes",
]
