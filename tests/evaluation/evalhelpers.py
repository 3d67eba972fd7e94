# Copyright (c) det_ext authors.
"""Helpers for the evaluation tests: reference APIs (LVIS API under a numpy shim, pycocotools)
and small random LVIS-format problems."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import tempfile
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import pycocotools.mask as mask_utils
import pytest


@contextlib.contextmanager
def lvis_shim() -> Iterator[Any]:
    """Imports the ``lvis`` package with ``np.float = float`` set (lvis 0.5.3 needs it on numpy
    >= 1.24) and removes the alias afterwards, so no other test sees it."""
    added = "float" not in np.__dict__
    if added:
        np.float = float
    try:
        lvis = pytest.importorskip("lvis")
        logging.getLogger("lvis").setLevel(logging.ERROR)
        yield lvis
    finally:
        if added:
            del np.float


def run_lvis_api(gt: Dict[str, Any], dets: List[Dict[str, Any]], iou_type: str,
                 max_dets: int = 300) -> Tuple[Dict[str, float], np.ndarray, np.ndarray]:
    """The LVIS API's ``get_results()``, precision and recall (inputs are deep-copied)."""
    with lvis_shim() as lvis, tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gt.json")
        with open(path, "w") as f:
            json.dump(gt, f)
        lvis_gt = lvis.LVIS(path)
        res = lvis.LVISResults(lvis_gt, copy.deepcopy(dets), max_dets=max_dets)
        ev = lvis.LVISEval(lvis_gt, res, iou_type)
        ev.run()
        return dict(ev.get_results()), ev.eval["precision"], ev.eval["recall"]


def run_coco_api(gt: Dict[str, Any], dets: List[Dict[str, Any]], iou_type: str
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pycocotools' ``COCOeval`` stats, precision and recall (inputs are deep-copied)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats, ev.eval["precision"], ev.eval["recall"]


def _poly(b: List[float], skew: float) -> List[float]:
    x, y, w, h = b
    return [x, y, x + w, y, x + w * skew, y + h, x, y + h * (1 - skew / 3)]


def random_problem(seed: int, num_images: int = 12, num_cats: int = 9, gt_per_image: int = 6,
                   dets_per_image: int = 40, segm: bool = False, score_decimals: int = 1,
                   crowd: bool = False, size: Tuple[int, int] = (120, 160)
                   ) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """A small LVIS-format problem with near-duplicate detections, mislabelled detections,
    federated negatives, not-exhaustive categories, ``ignore`` flags, score ties (scores rounded
    to ``score_decimals``) and, with ``crowd``, COCO ``iscrowd`` regions.

    Returns:
        tuple: the ground-truth dict and the result list (bbox, plus RLE segmentation when
        ``segm``).
    """
    rs = np.random.RandomState(seed)
    height, width = size
    freq = ["r", "c", "f"]
    cats = [{"id": 3 * i + 2, "name": f"cat{i}", "frequency": freq[i % 3],
             "instance_count": int(rs.choice([0, 5, 15, 150, 3000])), "image_count": 1}
            for i in range(num_cats)]
    cat_ids = [c["id"] for c in cats]
    images, anns, dets = [], [], []
    ann_id = 1
    for i in range(num_images):
        img_id = 10 + 5 * i
        n_gt = rs.randint(0, gt_per_image + 1)
        g_cats = [int(c) for c in rs.choice(cat_ids, size=n_gt)]
        present = sorted(set(g_cats))
        others = [c for c in cat_ids if c not in present]
        neg = sorted(int(c) for c in rs.choice(others, size=min(len(others), rs.randint(0, 4)),
                                                 replace=False))
        nel = [c for c in present if rs.rand() < 0.3]
        images.append({"id": img_id, "height": height, "width": width, "neg_category_ids": neg,
                       "not_exhaustive_category_ids": nel})
        boxes = []
        for c in g_cats:
            w, h = np.exp(rs.uniform(np.log(3), np.log(110), 2))
            b = [round(float(rs.uniform(0, width - w)), 1), round(float(rs.uniform(0, height - h)),
                                                                   1), round(float(w), 1),
                 round(float(h), 1)]
            ann = {"id": ann_id, "image_id": img_id, "category_id": c, "bbox": b}
            if segm:
                ann["segmentation"] = [_poly(b, 0.7)]
                ann["area"] = float(mask_utils.area(mask_utils.merge(
                    mask_utils.frPyObjects(ann["segmentation"], height, width))))
            else:
                ann["area"] = b[2] * b[3]
            if rs.rand() < 0.05:
                ann["ignore"] = 1
            if crowd:
                ann["iscrowd"] = int(rs.rand() < 0.1)
            anns.append(ann)
            boxes.append((b, c))
            ann_id += 1
        for _ in range(rs.randint(0, dets_per_image + 1)):
            if boxes and rs.rand() < 0.6:
                b, c = boxes[rs.randint(len(boxes))]
                j = rs.normal(0, 0.12, 4) * np.array([b[2], b[3], b[2], b[3]])
                box = [b[0] + j[0], b[1] + j[1], max(0.5, b[2] + j[2]), max(0.5, b[3] + j[3])]
                if rs.rand() < 0.2:
                    c = int(rs.choice(cat_ids))
            else:
                w, h = np.exp(rs.uniform(np.log(3), np.log(110), 2))
                box = [rs.uniform(0, width - w), rs.uniform(0, height - h), w, h]
                pool = present + neg
                c = int(rs.choice(pool)) if pool and rs.rand() < 0.7 else int(rs.choice(cat_ids))
            det = {"image_id": img_id, "category_id": c, "bbox": [float(v) for v in box],
                   "score": round(float(rs.rand()), score_decimals)}
            if segm:
                rle = mask_utils.frPyObjects([_poly(det["bbox"], 0.8)], height, width)[0]
                rle["counts"] = rle["counts"].decode("ascii")
                det["segmentation"] = rle
            dets.append(det)
    return {"images": images, "annotations": anns, "categories": cats}, dets


def segm_only(dets: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Copies of the results without ``bbox`` (mask areas, as Detectron2 evaluates segm)."""
    return [{k: v for k, v in d.items() if k != "bbox"} for d in dets]


def assert_close(ours: Dict[str, Any], ref: Dict[str, float], tol: float = 1e-9) -> None:
    """Every reference metric equals ours within ``tol``."""
    for key, value in ref.items():
        assert key in ours, key
        assert abs(ours[key] - float(value)) <= tol, (key, ours[key], value)
