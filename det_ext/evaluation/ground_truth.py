# Copyright (c) det_ext authors.
"""Loading and checking of LVIS/COCO-format ground truth into flat numpy arrays.

The arrays keep the annotation order of the file, which matters for exactness: the LVIS API and
pycocotools break ties between ground-truth boxes by that order.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Union

import numpy as np

from det_ext.utils.errors import DetExtInputError
from det_ext.utils.io import read_json_input

__all__ = ["EvaluationInputError", "GroundTruth", "load_ground_truth", "read_json"]

logger = logging.getLogger(__name__)


class EvaluationInputError(DetExtInputError, ValueError):
    """Bad evaluation input (ground truth or detections); the message names the offending entry."""


def read_json(path: Union[str, os.PathLike], what: str) -> Any:
    """Reads a JSON file, turning every failure into one clear :class:`EvaluationInputError`.

    Args:
        path (str or PathLike): the file.
        what (str): what the file holds, for the message (e.g. ``"ground truth"``).
    """
    return read_json_input(path, f"{what} file", EvaluationInputError)


_MISSING = object()


def pair_keys(img_idx: np.ndarray, cat_idx: np.ndarray, num_cats: int) -> np.ndarray:
    """Encodes (image index, category index) pairs as one int64 key ``img * num_cats + cat``."""
    return img_idx.astype(np.int64) * np.int64(num_cats) + cat_idx.astype(np.int64)


@dataclass
class GroundTruth:
    """Ground truth of an LVIS- or COCO-format dataset as flat arrays.

    Image and category indices refer to the sorted unique ids, which is the order in which the
    LVIS API and pycocotools iterate them. Annotations of unknown images or categories are dropped
    (as both APIs do) with a warning.

    Attributes:
        source (str): file name or ``"<dict>"``, used in messages.
        img_ids (np.ndarray): int64 [I], sorted image ids.
        img_hw (np.ndarray): int64 [I, 2], image height and width (-1 where missing).
        cat_ids (np.ndarray): int64 [K], sorted category ids.
        categories (list[dict]): the category records, sorted by id.
        anns (list[dict]): kept annotation records, in file order.
        ann_img, ann_cat (np.ndarray): int64 [G], image / category index of each annotation.
        ann_id_nonzero (np.ndarray): bool [G], annotation id != 0 (both APIs treat a match with
            annotation id 0 as no match when counting true positives).
        ann_area (np.ndarray): float64 [G], the ``area`` field (NaN where missing).
        ann_bbox (np.ndarray): float64 [G, 4] XYWH (NaN rows where missing).
        ann_ignore (np.ndarray): bool [G], the LVIS ``ignore`` field.
        ann_iscrowd (np.ndarray): bool [G], the COCO ``iscrowd`` field.
        neg_keys, nel_keys (np.ndarray): int64 sorted pair keys (see :func:`pair_keys`) of
            ``neg_category_ids`` and ``not_exhaustive_category_ids``.
        has_federated_fields (bool): whether the images carry ``neg_category_ids``.
    """

    source: str
    img_ids: np.ndarray
    img_hw: np.ndarray
    cat_ids: np.ndarray
    categories: List[Dict[str, Any]]
    anns: List[Dict[str, Any]]
    ann_img: np.ndarray
    ann_cat: np.ndarray
    ann_id_nonzero: np.ndarray
    ann_area: np.ndarray
    ann_bbox: np.ndarray
    ann_ignore: np.ndarray
    ann_iscrowd: np.ndarray
    neg_keys: np.ndarray
    nel_keys: np.ndarray
    has_federated_fields: bool
    _rles: Dict[int, Any] = field(default_factory=dict, repr=False)

    @property
    def num_images(self) -> int:
        return len(self.img_ids)

    @property
    def num_categories(self) -> int:
        return len(self.cat_ids)

    def image_index(self, ids: np.ndarray) -> np.ndarray:
        """Maps image ids to indices; unknown ids give -1."""
        return _lookup(self.img_ids, ids)

    def category_index(self, ids: np.ndarray) -> np.ndarray:
        """Maps category ids to indices; unknown ids give -1."""
        return _lookup(self.cat_ids, ids)

    def ann_rle(self, i: int) -> Any:
        """The compressed RLE of annotation ``i`` (polygons and uncompressed RLE are converted)."""
        rle = self._rles.get(i)
        if rle is None:
            from .geometry import segmentation_to_rle

            ann = self.anns[i]
            if "segmentation" not in ann:
                raise EvaluationInputError(
                    f"{self.source}: annotations[id={ann.get('id')}] has no 'segmentation' "
                    "(needed for iou_type='segm')")
            h, w = self.img_hw[self.ann_img[i]]
            rle = segmentation_to_rle(ann["segmentation"], int(h), int(w),
                                      f"{self.source}: annotations[id={ann.get('id')}]")
            self._rles[i] = rle
        return rle


def _lookup(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    if len(sorted_ids) == 0:
        return np.full(ids.shape, -1, dtype=np.int64)
    pos = np.searchsorted(sorted_ids, ids)
    pos_c = np.minimum(pos, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos_c] == ids, pos_c, -1).astype(np.int64)


def _int_id(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise EvaluationInputError(f"{where} must be an integer, got {value!r}")
    return int(value)


def _box(value: Any, where: str) -> List[float]:
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != 4:
        raise EvaluationInputError(f"{where} must be [x, y, w, h], got {value!r}")
    try:
        box = [float(v) for v in value]
    except (TypeError, ValueError):
        raise EvaluationInputError(f"{where} has a non-numeric value: {value!r}") from None
    if not all(math.isfinite(v) for v in box):
        raise EvaluationInputError(f"{where} has a NaN or infinite value: {box}")
    if box[2] < 0 or box[3] < 0:
        raise EvaluationInputError(f"{where} has a negative width or height: {box}")
    return box


def load_ground_truth(gt: Union[str, os.PathLike, Dict[str, Any], GroundTruth]) -> GroundTruth:
    """Loads and checks LVIS- or COCO-format ground truth.

    Args:
        gt (str, PathLike, dict or GroundTruth): a JSON file, its parsed content, or an already
            loaded :class:`GroundTruth` (returned as is).

    Returns:
        GroundTruth: the flat arrays.

    Raises:
        EvaluationInputError: malformed JSON, a missing top-level list, a record without an
            integer ``id``, duplicate image/category/annotation ids, or a bad ``bbox``/``area``.
    """
    if isinstance(gt, GroundTruth):
        return gt
    if isinstance(gt, (str, os.PathLike)):
        source = os.fspath(gt)
        data = read_json(source, "ground truth")
    elif isinstance(gt, dict):
        source, data = "<ground truth dict>", gt
    else:
        raise EvaluationInputError(
            f"ground truth must be a path or a dict, got {type(gt).__name__}")
    if not isinstance(data, dict):
        raise EvaluationInputError(f"{source}: top level must be an object, got "
                                   f"{type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise EvaluationInputError(f"{source}: field '{key}' is missing or not a list")

    images = data["images"]
    img_id_list = [_int_id(im.get("id") if isinstance(im, dict) else None,
                           f"{source}: images[{i}].id") for i, im in enumerate(images)]
    img_ids = np.array(sorted(set(img_id_list)), dtype=np.int64)
    if len(img_ids) != len(img_id_list):
        raise EvaluationInputError(f"{source}: duplicate image ids")
    cats = data["categories"]
    cat_id_list = [_int_id(c.get("id") if isinstance(c, dict) else None,
                           f"{source}: categories[{i}].id") for i, c in enumerate(cats)]
    cat_ids = np.array(sorted(set(cat_id_list)), dtype=np.int64)
    if len(cat_ids) != len(cat_id_list):
        raise EvaluationInputError(f"{source}: duplicate category ids")
    categories = sorted(cats, key=lambda c: c["id"])
    num_cats = len(cat_ids)

    img_hw = np.full((len(img_ids), 2), -1, dtype=np.int64)
    neg: List[int] = []
    nel: List[int] = []
    has_fed = False
    img_idx_of = _lookup(img_ids, np.array(img_id_list, dtype=np.int64))
    for im, idx in zip(images, img_idx_of):
        img_hw[idx] = (int(im.get("height", -1)), int(im.get("width", -1)))
        if "neg_category_ids" in im:
            has_fed = True
        for key, out in (("neg_category_ids", neg), ("not_exhaustive_category_ids", nel)):
            ids = im.get(key) or []
            if ids:
                cidx = _lookup(cat_ids, np.asarray(ids, dtype=np.int64))
                out.extend((int(idx) * num_cats + cidx[cidx >= 0]).tolist())

    anns, a_img, a_cat, a_id, a_area, a_bbox, a_ign, a_crowd = [], [], [], [], [], [], [], []
    seen_ids = set()
    dropped = n_no_area = 0
    raw_anns = data["annotations"]
    ann_img_idx = _lookup(img_ids, np.array([a.get("image_id", -(2**62)) if isinstance(a, dict)
                                             and isinstance(a.get("image_id"), int) else -(2**62)
                                             for a in raw_anns], dtype=np.int64))
    ann_cat_idx = _lookup(cat_ids, np.array([a.get("category_id", -(2**62)) if isinstance(a, dict)
                                             and isinstance(a.get("category_id"), int)
                                             else -(2**62) for a in raw_anns], dtype=np.int64))
    for i, ann in enumerate(raw_anns):
        if not isinstance(ann, dict):
            raise EvaluationInputError(f"{source}: annotations[{i}] is not an object")
        where = f"{source}: annotations[id={ann.get('id')}]"
        aid = _int_id(ann.get("id"), f"{source}: annotations[{i}].id")
        if aid in seen_ids:
            raise EvaluationInputError(f"{where}: duplicate annotation id")
        seen_ids.add(aid)
        if ann_img_idx[i] < 0 or ann_cat_idx[i] < 0:
            dropped += 1
            continue
        box = _box(ann["bbox"], f"{where}.bbox") if "bbox" in ann else [math.nan] * 4
        area = ann.get("area", _MISSING)
        if area is _MISSING:
            n_no_area += 1
            area = box[2] * box[3]  # fallback (the reference APIs require the field)
        elif not isinstance(area, (int, float)) or isinstance(area, bool):
            raise EvaluationInputError(f"{where}.area must be a number, got {area!r}")
        anns.append(ann)
        a_img.append(ann_img_idx[i])
        a_cat.append(ann_cat_idx[i])
        a_id.append(aid != 0)
        a_area.append(float(area))
        a_bbox.append(box)
        a_ign.append(bool(ann.get("ignore", 0)))
        a_crowd.append(bool(ann.get("iscrowd", 0)))
    if dropped:
        logger.warning("%s: %d annotations refer to unknown images or categories and are ignored",
                       source, dropped)
    if n_no_area:
        logger.warning("%s: %d annotations lack 'area'; using the box area w*h", source, n_no_area)
    area = np.array(a_area, dtype=np.float64)
    bbox = np.array(a_bbox, dtype=np.float64).reshape(-1, 4)
    return GroundTruth(
        source=source, img_ids=img_ids, img_hw=img_hw, cat_ids=cat_ids, categories=categories,
        anns=anns, ann_img=np.array(a_img, dtype=np.int64), ann_cat=np.array(a_cat, dtype=np.int64),
        ann_id_nonzero=np.array(a_id, dtype=bool), ann_area=area, ann_bbox=bbox,
        ann_ignore=np.array(a_ign, dtype=bool), ann_iscrowd=np.array(a_crowd, dtype=bool),
        neg_keys=np.unique(np.array(neg, dtype=np.int64)),
        nel_keys=np.unique(np.array(nel, dtype=np.int64)), has_federated_fields=has_fed,
    )
