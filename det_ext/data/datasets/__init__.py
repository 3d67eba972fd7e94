# Copyright (c) det_ext authors.
"""Dataset loading and registration (LT-Shapes, LVIS-format files, COCO-LT)."""
from .builtin import prepare_datasets, register_all_builtin
from .lt_shapes import datasets_root, ensure_lt_shapes_generated, register_lt_shapes
from .lvis_format import (
    load_lvis_format_json,
    metadata_from_categories,
    read_dataset_json,
    register_lvis_format_dataset,
)

__all__ = [
    "prepare_datasets", "register_all_builtin", "register_lt_shapes", "ensure_lt_shapes_generated",
    "datasets_root", "load_lvis_format_json", "read_dataset_json", "register_lvis_format_dataset",
    "metadata_from_categories",
]
