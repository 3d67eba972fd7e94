# Copyright (c) det_ext authors.
"""Registration of LT-Shapes worlds in Detectron2's catalogs.

``lt_shapes_train`` / ``lt_shapes_val`` are the default world. Any other world is registered with
:func:`register_lt_shapes`; names of the form ``lt_shapes_seed<N>_<split>`` (the default world with
another seed) are registered on demand by :func:`maybe_register_lt_shapes_name`. Worlds are
generated lazily, under ``$DETECTRON2_DATASETS`` (default ``datasets``), the first time they are
loaded.
"""
from __future__ import annotations

import os
import re
from typing import Dict, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from det_ext.data.lt_shapes import LTShapesSpec, generate_lt_shapes, lt_shapes_dir
from det_ext.data.lt_shapes.vocabulary import build_categories

from .lvis_format import load_lvis_format_json, read_dataset_json, register_lvis_format_dataset
from .lvis_format import metadata_from_categories

__all__ = ["register_lt_shapes", "maybe_register_lt_shapes_name", "ensure_lt_shapes_generated",
           "datasets_root"]

_SEED_NAME = re.compile(r"^lt_shapes_seed(\d+)_(train|val)$")


def datasets_root() -> str:
    """The datasets root: ``$DETECTRON2_DATASETS`` or ``datasets``."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def ensure_lt_shapes_generated(dataset_name: str) -> str:
    """Generates the world behind ``dataset_name`` if needed and completes its metadata.

    After this call the metadata holds the training statistics (``class_image_count``,
    ``class_instance_count``, ``class_frequency``) that long-tail methods read.

    Returns:
        str: the world's folder.
    """
    meta = MetadataCatalog.get(dataset_name)
    spec: LTShapesSpec = meta.lt_shapes_spec
    root = generate_lt_shapes(spec, meta.lt_shapes_root)
    if not hasattr(meta, "class_instance_count"):
        cats = read_dataset_json(meta.json_file)["categories"]
        derived = metadata_from_categories(cats)
        meta.set(**{k: derived[k] for k in
                    ("class_frequency", "class_image_count", "class_instance_count")})
    return root


def register_lt_shapes(spec: Optional[LTShapesSpec] = None, prefix: str = "lt_shapes",
                       root: Optional[str] = None) -> Dict[str, str]:
    """Registers ``{prefix}_train`` and ``{prefix}_val`` for the world given by ``spec``.

    Args:
        spec (LTShapesSpec or None): the world; the default world when None.
        prefix (str): dataset name prefix.
        root (str or None): datasets root; ``$DETECTRON2_DATASETS`` (read now) when None.

    Returns:
        dict: split name ("train", "val") -> registered dataset name.
    """
    spec = spec or LTShapesSpec()
    root = root or datasets_root()
    folder = lt_shapes_dir(spec, root)
    categories = build_categories(spec.num_categories, spec.num_twins)
    names = {}
    for split in ("train", "val"):
        name = f"{prefix}_{split}"
        if name in DatasetCatalog.list():
            if MetadataCatalog.get(name).get("lt_shapes_spec") != spec:
                raise ValueError(f"dataset '{name}' is already registered with other parameters")
            names[split] = name
            continue

        def load(name=name, split=split):
            ensure_lt_shapes_generated(name)
            return load_lvis_format_json(os.path.join(folder, f"{split}.json"), folder, name)

        register_lvis_format_dataset(
            name, os.path.join(folder, f"{split}.json"), folder,
            metadata={
                "thing_classes": [c.name for c in categories],
                "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(categories))},
                "lt_shapes_spec": spec, "lt_shapes_root": root, "lt_shapes_split": split,
                "captions_file": os.path.join(folder, f"captions_{split}.json"),
                "vocab_file": os.path.join(folder, "vocab.json"),
            },
            loader=load,
        )
        names[split] = name
    return names


def maybe_register_lt_shapes_name(name: str) -> Optional[Tuple[str, str]]:
    """Registers ``lt_shapes_seed<N>_{train,val}`` on demand; returns (train, val) names or None."""
    match = _SEED_NAME.match(name)
    if match is None:
        return None
    seed = int(match.group(1))
    names = register_lt_shapes(LTShapesSpec(seed=seed), prefix=f"lt_shapes_seed{seed}")
    return names["train"], names["val"]
