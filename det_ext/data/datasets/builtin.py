# Copyright (c) det_ext authors.
"""Datasets registered when det_ext is imported, and the checks run before training or testing.

- ``lt_shapes_train`` / ``lt_shapes_val``: the default LT-Shapes world (generated on first use).
- ``lt_shapes_seed<N>_{train,val}``: the default world with seed N (registered on demand).
- LVIS v0.5 / v1 and COCO 2017 are registered by Detectron2 itself (``lvis_v0.5_train``,
  ``lvis_v1_val``, ``coco_2017_train``, ...); det_ext adds their training statistics on demand.
- ``coco_lt_train`` / ``coco_lt_val``: COCO-LT (``tools/make_coco_lt.py``) in LVIS format, with
  the COCO 2017 images. ``$DET_EXT_COCO_LT_TRAIN_JSON`` / ``$DET_EXT_COCO_LT_VAL_JSON`` override the
  paths.

The expected layout is documented in ``datasets/README.md``.
"""
from __future__ import annotations

import os
from typing import Iterable

from detectron2.data import DatasetCatalog, MetadataCatalog

from det_ext.utils.errors import DatasetFormatError

from .lt_shapes import datasets_root, ensure_lt_shapes_generated, maybe_register_lt_shapes_name
from .lt_shapes import register_lt_shapes
from .lvis_format import register_lvis_format_dataset

__all__ = ["register_all_builtin", "prepare_datasets"]


def register_all_builtin() -> None:
    """Registers the default LT-Shapes world and COCO-LT (idempotent)."""
    root = datasets_root()
    register_lt_shapes()
    coco_lt = {
        "coco_lt_train": (os.getenv("DET_EXT_COCO_LT_TRAIN_JSON",
                                    os.path.join(root, "coco_lt/annotations/coco_lt_train.json")),
                          os.path.join(root, "coco/train2017")),
        "coco_lt_val": (os.getenv("DET_EXT_COCO_LT_VAL_JSON",
                                  os.path.join(root, "coco_lt/annotations/coco_lt_val.json")),
                        os.path.join(root, "coco/val2017")),
    }
    for name, (json_file, image_root) in coco_lt.items():
        if name not in DatasetCatalog.list():
            register_lvis_format_dataset(name, json_file, image_root)


def prepare_datasets(names: Iterable[str]) -> None:
    """Makes the named datasets ready to load, or fails with a clear message.

    Registers on-demand LT-Shapes names, generates LT-Shapes worlds that are missing, and checks
    that the annotation file and image folder of every other dataset exist.

    Raises:
        DatasetFormatError: an unknown dataset name or a missing file, naming the expected path.
    """
    for name in names:
        maybe_register_lt_shapes_name(name)
        __import__("det_ext.data.noisy_datasets", fromlist=["_"]).maybe_register_noisy_name(name)
        if name not in DatasetCatalog.list():
            raise DatasetFormatError(f"dataset '{name}' is not registered (see datasets/README.md)")
        meta = MetadataCatalog.get(name)
        if meta.get("lt_shapes_spec") is not None:
            ensure_lt_shapes_generated(name)
            continue
        json_file = meta.get("json_file")
        if json_file and not os.path.isfile(json_file):
            raise DatasetFormatError(f"dataset '{name}': annotation file not found: {json_file} "
                                     "(expected layout in datasets/README.md; root is "
                                     "$DETECTRON2_DATASETS)")
        image_root = meta.get("image_root")
        if image_root and not os.path.isdir(image_root):
            raise DatasetFormatError(f"dataset '{name}': image folder not found: {image_root}")
