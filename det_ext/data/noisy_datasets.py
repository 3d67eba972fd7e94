# Copyright (c) det_ext authors.
"""Registration of noisy copies of registered datasets (``<name>_noisy_l40_b40`` style).

``register_noisy_dataset("lt_shapes_train", 0.4, 0.4)`` writes (once, cached by content) a noisy
JSON under ``$DETECTRON2_DATASETS/noisy/`` and registers ``lt_shapes_train_noisy_l40_b40``. Names
``<base>_noisy_l<L>_b<B>`` and ``<base>_noisy_l<L>_b<B>_s<seed>`` (L, B in percent) are registered
on demand by :func:`maybe_register_noisy_name`, which ``prepare_datasets`` calls for every name.
The dataset dicts carry ``clean_id``, ``clean_bbox`` (XYWH) and ``clean_category_id`` (contiguous)
on every annotation so that corrections can be scored.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from det_ext.utils.errors import DatasetFormatError
from det_ext.utils.io import atomic_write_json

from .datasets.lt_shapes import datasets_root
from .datasets.lvis_format import load_lvis_format_json, read_dataset_json
from .datasets.lvis_format import register_lvis_format_dataset
from .noise import NoiseSpec, NoiseSpecError, make_noisy_dataset

__all__ = ["noisy_dataset_name", "register_noisy_dataset", "maybe_register_noisy_name",
           "dataset_dicts_to_json", "write_noisy_json"]

_NOISY_NAME = re.compile(r"^(?P<base>.+)_noisy_l(?P<l>\d{1,3})_b(?P<b>\d{1,3})(?:_s(?P<s>\d+))?$")
# Metadata copied from the clean dataset (training statistics and class names).
_COPIED_META = ("thing_classes", "thing_dataset_id_to_contiguous_id", "class_frequency",
                "class_image_count", "class_instance_count", "thing_synonyms", "captions_file",
                "vocab_file")


def noisy_dataset_name(base_name: str, label_rate: float, box_rate: float, seed: int = 0) -> str:
    """``<base>_noisy_l<L>_b<B>`` (+ ``_s<seed>`` when seed != 0), rates rounded to percent."""
    name = f"{base_name}_noisy_l{int(round(label_rate * 100))}_b{int(round(box_rate * 100))}"
    return name if seed == 0 else f"{name}_s{seed}"


def dataset_dicts_to_json(dicts: List[Dict[str, Any]], thing_classes: List[str]) -> Dict[str, Any]:
    """A COCO-format dataset from Detectron2 dataset dicts (for bases without a JSON, e.g. VOC).

    Category ids are contiguous id + 1; annotation ids are assigned in order from 1.
    """
    images, anns = [], []
    for i, d in enumerate(dicts):
        image_id = d.get("image_id", i + 1)
        images.append({"id": image_id, "file_name": d["file_name"], "height": d["height"],
                       "width": d["width"]})
        for obj in d.get("annotations", []):
            box = BoxMode.convert(list(obj["bbox"]), obj["bbox_mode"], BoxMode.XYWH_ABS)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "bbox": [float(v) for v in box],
                         "category_id": int(obj["category_id"]) + 1,
                         "iscrowd": int(obj.get("iscrowd", 0)), "area": float(box[2] * box[3])})
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(thing_classes)]
    return {"images": images, "annotations": anns, "categories": cats}


def _clean_source(base_name: str) -> Dict[str, Any]:
    """The clean dataset as a COCO/LVIS dict plus its image root."""
    from det_ext.data.datasets import prepare_datasets

    prepare_datasets([base_name])
    meta = MetadataCatalog.get(base_name)
    json_file = meta.get("json_file")
    if json_file and os.path.isfile(json_file):
        return {"data": read_dataset_json(json_file), "image_root": meta.get("image_root", ""),
                "json_file": json_file}
    dicts = DatasetCatalog.get(base_name)
    data = dataset_dicts_to_json(dicts, list(meta.thing_classes))
    return {"data": data, "image_root": "", "json_file": None}


def write_noisy_json(clean: Dict[str, Any], spec: NoiseSpec, out_file: str,
                     source: str = "dataset") -> Dict[str, Any]:
    """Writes the noisy copy of ``clean`` to ``out_file`` atomically and returns it."""
    noisy = make_noisy_dataset(clean, spec, source)
    atomic_write_json(out_file, noisy)
    return noisy


def _content_key(data: Dict[str, Any], spec: NoiseSpec) -> str:
    blob = json.dumps({"anns": [(a.get("id"), a.get("bbox"), a.get("category_id"))
                                for a in data["annotations"]],
                       "spec": repr(spec)}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _load_noisy(json_file: str, image_root: str, name: str) -> List[Dict[str, Any]]:
    dicts = load_lvis_format_json(json_file, image_root, name)
    id_map = MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id
    raw = {a["id"]: a for a in read_dataset_json(json_file)["annotations"] if "clean_bbox" in a}
    for d in dicts:
        for obj in d["annotations"]:
            src = raw.get(obj.get("id"))
            if src is not None:
                obj["clean_bbox"] = list(src["clean_bbox"])
                obj["clean_category_id"] = id_map[src["clean_category_id"]]
    return dicts


def register_noisy_dataset(base_name: str, label_rate: float, box_rate: float, seed: int = 0,
                           name: Optional[str] = None, root: Optional[str] = None,
                           **spec_kwargs: Any) -> str:
    """Registers a noisy copy of the registered dataset ``base_name``.

    The noisy JSON is written to ``<root>/noisy/<name>.json`` (regenerated when the clean data or
    the noise parameters change) before this function returns.

    Args:
        base_name (str): a registered (or on-demand registrable) dataset.
        label_rate (float): label noise Nl in [0, 1].
        box_rate (float): box noise Nb in [0, 1].
        seed (int): noise seed.
        name (str or None): dataset name; :func:`noisy_dataset_name` by default.
        root (str or None): datasets root; ``$DETECTRON2_DATASETS`` by default.
        **spec_kwargs: other :class:`~det_ext.data.noise.NoiseSpec` fields.

    Returns:
        str: the registered name.

    Raises:
        NoiseSpecError: bad rates; DatasetFormatError: unknown base dataset or empty dataset.
    """
    spec = NoiseSpec(label_rate=float(label_rate), box_rate=float(box_rate), seed=int(seed),
                     **spec_kwargs)
    name = name or noisy_dataset_name(base_name, label_rate, box_rate, seed)
    if name in DatasetCatalog.list():
        if MetadataCatalog.get(name).get("noise_spec") != spec:
            raise DatasetFormatError(f"dataset '{name}' is already registered with other "
                                     "parameters")
        return name
    from det_ext.data.datasets.lt_shapes import maybe_register_lt_shapes_name

    maybe_register_lt_shapes_name(base_name)
    if base_name not in DatasetCatalog.list():
        raise DatasetFormatError(f"noisy dataset '{name}': base dataset '{base_name}' is not "
                                 "registered")
    clean = _clean_source(base_name)
    out_file = os.path.join(root or datasets_root(), "noisy", f"{name}.json")
    key = _content_key(clean["data"], spec)
    fresh = False
    if os.path.isfile(out_file):
        try:
            fresh = read_dataset_json(out_file).get("noise", {}).get("content_key") == key
        except DatasetFormatError:
            fresh = False
    if not fresh:
        noisy = make_noisy_dataset(clean["data"], spec, clean["json_file"] or base_name)
        noisy["noise"]["content_key"] = key
        atomic_write_json(out_file, noisy)
    base_meta = MetadataCatalog.get(base_name)
    meta = {k: base_meta.get(k) for k in _COPIED_META if base_meta.get(k) is not None}
    image_root = clean["image_root"]
    register_lvis_format_dataset(
        name, out_file, image_root,
        metadata={**meta, "noise_spec": spec, "clean_dataset": base_name,
                  "clean_json_file": clean["json_file"]},
        loader=lambda: _load_noisy(out_file, image_root, name))
    return name


def maybe_register_noisy_name(name: str) -> Optional[str]:
    """Registers ``<base>_noisy_l<L>_b<B>[_s<seed>]`` on demand; returns the name or None."""
    match = _NOISY_NAME.match(name)
    if match is None or name in DatasetCatalog.list():
        return None
    label, box = int(match.group("l")) / 100.0, int(match.group("b")) / 100.0
    if label > 1 or box > 1:
        raise NoiseSpecError(f"dataset '{name}': noise rates must be at most 100 percent")
    return register_noisy_dataset(match.group("base"), label, box, int(match.group("s") or 0),
                                  name=name)
