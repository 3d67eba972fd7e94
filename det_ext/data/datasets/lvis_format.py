# Copyright (c) det_ext authors.
"""Validated loading and registration of LVIS-format (and COCO-format) instance datasets.

Unlike Detectron2's ``load_lvis_json`` this loader accepts RLE as well as polygon masks, keeps the
federated fields and captions, and checks its input: every problem is reported as one
:class:`~det_ext.utils.errors.DatasetFormatError` naming the file, the entry and the field.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable, Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from det_ext.utils.errors import DatasetFormatError
from det_ext.utils.io import read_json_input

__all__ = [
    "read_dataset_json", "load_lvis_format_json", "register_lvis_format_dataset",
    "metadata_from_categories",
]

logger = logging.getLogger(__name__)

_REQUIRED_TOP = ("images", "annotations", "categories")


def read_dataset_json(json_file: str) -> Dict[str, Any]:
    """Reads and structurally checks a COCO/LVIS-format JSON file.

    Raises:
        DatasetFormatError: missing file, malformed or truncated JSON, or a missing top-level field.
    """
    data = read_json_input(json_file, "annotation file")
    if not isinstance(data, dict):
        raise DatasetFormatError(
            f"{json_file}: top level must be an object, got {type(data).__name__}")
    for key in _REQUIRED_TOP:
        if not isinstance(data.get(key), list):
            raise DatasetFormatError(f"{json_file}: field '{key}' is missing or not a list")
    return data


def _check_bbox(json_file: str, ann: Dict[str, Any]) -> List[float]:
    where = f"{json_file}: annotations[id={ann.get('id')}].bbox"
    box = ann.get("bbox")
    if not isinstance(box, list) or len(box) != 4:
        raise DatasetFormatError(f"{where} must be [x, y, w, h], got {box!r}")
    try:
        box = [float(v) for v in box]
    except (TypeError, ValueError):
        raise DatasetFormatError(f"{where} has a non-numeric value: {ann.get('bbox')!r}") from None
    if not all(math.isfinite(v) for v in box):
        raise DatasetFormatError(f"{where} has a NaN or infinite value: {box}")
    if box[2] <= 0 or box[3] <= 0:
        raise DatasetFormatError(f"{where} has a zero or negative size: {box}")
    return box


def metadata_from_categories(categories: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Detectron2 metadata derived from LVIS-style category records (sorted by id).

    Returns:
        dict: ``thing_classes``, ``thing_dataset_id_to_contiguous_id``, ``class_frequency`` (r/c/f
        per class, when the records carry ``frequency``), ``class_image_count`` (LVIS v1 style list
        of ``{"id", "image_count"}``) and ``class_instance_count`` (list per contiguous class), the
        last two when the records carry ``image_count`` / ``instance_count``, and
        ``thing_synonyms``.
    """
    cats = sorted(categories, key=lambda c: c["id"])
    meta: Dict[str, Any] = {
        "thing_classes": [c["name"] for c in cats],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats)},
        "thing_synonyms": [c.get("synonyms", [c["name"]]) for c in cats],
    }
    if all("frequency" in c for c in cats):
        meta["class_frequency"] = [c["frequency"] for c in cats]
    if all("image_count" in c for c in cats):
        meta["class_image_count"] = [{"id": c["id"], "image_count": c["image_count"]} for c in cats]
    if all("instance_count" in c for c in cats):
        meta["class_instance_count"] = [int(c["instance_count"]) for c in cats]
    return meta


def load_lvis_format_json(
    json_file: str, image_root: str, dataset_name: Optional[str] = None, check_images: bool = True
) -> List[Dict[str, Any]]:
    """Loads an LVIS- or COCO-format file into Detectron2 dataset dicts, validating it.

    Args:
        json_file (str): annotation file.
        image_root (str): folder that image ``file_name`` (or the file part of ``coco_url``) is
            relative to.
        dataset_name (str or None): when given, its metadata receives the category-derived fields.
        check_images (bool): check that every image file exists.

    Returns:
        list[dict]: Detectron2 dicts with ``file_name, height, width, image_id, annotations``
        (``bbox`` XYWH_ABS, contiguous ``category_id``, ``segmentation`` as polygons or RLE dict,
        ``iscrowd``), ``neg_category_ids`` and ``not_exhaustive_category_ids`` (contiguous ids),
        and ``captions`` when the file has them.

    Raises:
        DatasetFormatError: malformed input, naming the file, the entry and the field.
    """
    data = read_dataset_json(json_file)
    categories = data["categories"]
    for i, c in enumerate(categories):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise DatasetFormatError(f"{json_file}: categories[{i}] needs fields 'id' and 'name'")
    meta = metadata_from_categories(categories)
    id_map = meta["thing_dataset_id_to_contiguous_id"]
    if dataset_name is not None:
        known = MetadataCatalog.get(dataset_name)
        known.set(**{k: v for k, v in meta.items() if not hasattr(known, k)})
    images: Dict[int, Dict[str, Any]] = {}
    for i, img in enumerate(data["images"]):
        for key in ("id", "height", "width"):
            if key not in img:
                raise DatasetFormatError(f"{json_file}: images[{i}] lacks field '{key}'")
        name = img.get("file_name") or "/".join(str(img.get("coco_url", "")).split("/")[-2:])
        if not name:
            raise DatasetFormatError(f"{json_file}: images[id={img['id']}] has no 'file_name'")
        path = os.path.join(image_root, name)
        if check_images and not os.path.isfile(path):
            raise DatasetFormatError(f"{json_file}: images[id={img['id']}].file_name: "
                                     f"image file not found: {path}")
        record = {"file_name": path, "height": img["height"], "width": img["width"],
                  "image_id": img["id"], "annotations": []}
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            unknown = [c for c in img.get(key, []) if c not in id_map]
            if unknown:
                raise DatasetFormatError(f"{json_file}: images[id={img['id']}].{key} has unknown "
                                         f"category ids {unknown[:5]}")
            record[key] = [id_map[c] for c in img.get(key, [])]
        if "captions" in img:
            record["captions"] = list(img["captions"])
        images[img["id"]] = record
    for ann in data["annotations"]:
        where = f"{json_file}: annotations[id={ann.get('id')}]"
        if ann.get("image_id") not in images:
            raise DatasetFormatError(
                f"{where}.image_id refers to unknown image {ann.get('image_id')}")
        if ann.get("category_id") not in id_map:
            raise DatasetFormatError(
                f"{where}.category_id refers to unknown category {ann.get('category_id')}")
        obj = {"bbox": _check_bbox(json_file, ann), "bbox_mode": BoxMode.XYWH_ABS,
               "category_id": id_map[ann["category_id"]], "iscrowd": int(ann.get("iscrowd", 0))}
        if "segmentation" in ann:
            obj["segmentation"] = ann["segmentation"]
        for key in ("id", "pseudo_score", "clean_id"):
            if key in ann:
                obj[key] = ann[key]
        images[ann["image_id"]]["annotations"].append(obj)
    logger.info("Loaded %d images, %d annotations in %d categories from %s", len(images),
                len(data["annotations"]), len(categories), json_file)
    return list(images.values())


def register_lvis_format_dataset(
    name: str,
    json_file: str,
    image_root: str,
    metadata: Optional[Dict[str, Any]] = None,
    loader: Optional[Callable[[], List[Dict[str, Any]]]] = None,
) -> None:
    """Registers an LVIS/COCO-format dataset (RLE or polygon masks) in Detectron2's catalogs.

    Args:
        name (str): dataset name, e.g. ``"coco_lt_train"``.
        json_file (str): annotation file; it need not exist yet (checked when loaded).
        image_root (str): image folder.
        metadata (dict or None): extra metadata; ``evaluator_type`` defaults to ``"lvis"``.
        loader (callable or None): replaces the default loader (for lazily generated datasets).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    DatasetCatalog.register(
        name, loader or (lambda: load_lvis_format_json(json_file, image_root, name))
    )
    meta = {"evaluator_type": "lvis", **(metadata or {})}
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, **meta)
