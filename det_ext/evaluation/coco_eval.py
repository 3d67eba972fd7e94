# Copyright (c) det_ext authors.
"""COCO evaluation equivalent to pycocotools' ``COCOeval`` (bbox and segm), on the same core.

Reproduced: results on unknown images are an error; the detection area is the box ``w * h`` when
the results carry ``bbox`` (else the mask area); ``iscrowd`` ground truth is ignored and may be
matched repeatedly, with IoU relative to the detection's area; the best ``max_dets[-1]`` results
per (image, category) are matched; precision/recall per ``max_dets`` limit; the 12 ``stats`` of
``COCOeval.summarize()``. Differences: results on unknown categories are an error (pycocotools
drops them silently) and an empty result list gives zeros (pycocotools crashes).
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from .accumulate import accumulate
from .detections import Detections, load_detections, top_k_per_group
from .ground_truth import EvaluationInputError, GroundTruth, load_ground_truth
from .matching import MatchProblem, gt_ignored_by_area, match_detections
from .prepare import (AREA_LABELS, AREA_RANGES, IOU_THRS, REC_THRS, check_iou_type,
                      detection_areas, gc_paused, index_detections, make_pair_iou, uses_box_area)

__all__ = ["COCOStyleEval", "evaluate_coco"]

logger = logging.getLogger(__name__)


class COCOStyleEval:
    """COCO evaluation of one result set (the arrays of pycocotools' ``COCOeval.eval``).

    Args:
        gt (str, dict or GroundTruth): COCO-format ground truth.
        dt (str, list[dict] or Detections): results.
        iou_type (str): "bbox" or "segm".
        max_dets (sequence of 3 int): the limits per (image, category), (1, 10, 100).

    Attributes (after :meth:`run`):
        precision (np.ndarray): float64 [T=10, R=101, K, A=4, M=3], -1 where undefined.
        recall (np.ndarray): float64 [T, K, A, M].
        stats (np.ndarray): float64 [12], as ``COCOeval.stats``.
    """

    def __init__(self, gt: Union[str, os.PathLike, Dict[str, Any], GroundTruth],
                 dt: Union[str, os.PathLike, List[Dict[str, Any]], Detections],
                 iou_type: str = "bbox", *, max_dets: Sequence[int] = (1, 10, 100)) -> None:
        self.iou_type = check_iou_type(iou_type)
        self.max_dets = sorted(int(m) for m in max_dets)
        if len(self.max_dets) != 3 or self.max_dets[0] < 0:
            raise EvaluationInputError(f"max_dets must be three limits, got {list(max_dets)}")
        self.gt = load_ground_truth(gt)
        self.dets = load_detections(dt, iou_type)
        self.precision: Optional[np.ndarray] = None
        self.recall: Optional[np.ndarray] = None
        self.stats: Optional[np.ndarray] = None

    def run(self) -> "COCOStyleEval":
        """Evaluates and summarises. Returns self."""
        with gc_paused():
            return self._run()

    def _run(self) -> "COCOStyleEval":
        gt, d = self.gt, self.dets
        n, num_k = len(d), gt.num_categories
        img_all, cat_all = index_detections(gt, d)
        box_area = uses_box_area(d, 0 if n else None)
        # pycocotools matches the best max_dets[-1] results of each (image, category).
        keep = top_k_per_group(img_all * np.int64(num_k) + cat_all, d.scores,
                               np.arange(n, dtype=np.int64), self.max_dets[-1])
        dt_idx = np.flatnonzero(keep)
        area, rles = detection_areas(gt, d, img_all, dt_idx, box_area)
        dt_img, dt_cat, score = img_all[dt_idx], cat_all[dt_idx], d.scores[dt_idx]
        g_idx = np.arange(len(gt.anns), dtype=np.int64)
        crowd = gt.ann_iscrowd
        problem = MatchProblem(
            num_cats=num_k, gt_img=gt.ann_img, gt_cat=gt.ann_cat, gt_area=gt.ann_area,
            gt_ignore=crowd, gt_crowd=crowd, gt_id_nonzero=gt.ann_id_nonzero, dt_img=dt_img,
            dt_cat=dt_cat, dt_score=score,
            pair_iou=make_pair_iou(gt, g_idx, d, dt_idx, img_all, self.iou_type, rles, crowd))
        match = match_detections(problem, AREA_RANGES, IOU_THRS)
        base_ig = np.stack([(area < lo) | (area > hi) for lo, hi in AREA_RANGES])
        g_ig = gt_ignored_by_area(crowd, gt.ann_area, AREA_RANGES)
        num_gt = np.stack([np.bincount(gt.ann_cat[~g_ig[a]], minlength=num_k)
                           for a in range(len(AREA_RANGES))], axis=1)
        self.precision, self.recall = accumulate(dt_cat, dt_img, score, base_ig, match, num_gt,
                                                 REC_THRS, max_dets=self.max_dets)
        self.num_gt = num_gt[:, 0]
        self.num_dt = np.bincount(dt_cat, minlength=num_k)
        self._summarize()
        return self

    def _summary(self, ap: bool, iou_thr: Optional[float] = None, area: str = "all",
                 max_dets: int = 100) -> float:
        a = [i for i, lbl in enumerate(AREA_LABELS) if lbl == area]
        m = [i for i, v in enumerate(self.max_dets) if v == max_dets]
        s = self.precision if ap else self.recall
        if iou_thr is not None:
            s = s[np.where(iou_thr == IOU_THRS)[0]]
        s = s[:, :, :, a, m] if ap else s[:, :, a, m]
        v = s[s > -1]
        return float(np.mean(v)) if len(v) else -1.0

    def _summarize(self) -> None:
        m = self.max_dets
        self.stats = np.array([
            self._summary(True),
            self._summary(True, iou_thr=0.5, max_dets=m[2]),
            self._summary(True, iou_thr=0.75, max_dets=m[2]),
            self._summary(True, area="small", max_dets=m[2]),
            self._summary(True, area="medium", max_dets=m[2]),
            self._summary(True, area="large", max_dets=m[2]),
            self._summary(False, max_dets=m[0]),
            self._summary(False, max_dets=m[1]),
            self._summary(False, max_dets=m[2]),
            self._summary(False, area="small", max_dets=m[2]),
            self._summary(False, area="medium", max_dets=m[2]),
            self._summary(False, area="large", max_dets=m[2]),
        ])

    def per_category_ap(self) -> np.ndarray:
        """float64 [K] AP per category (area all, last limit), -1 without ground truth."""
        p = self.precision[:, :, :, 0, -1]
        valid = p > -1
        cnt = valid.sum(axis=(0, 1))
        return np.where(cnt > 0, np.where(valid, p, 0.0).sum(axis=(0, 1)) / np.maximum(cnt, 1),
                        -1.0)


def evaluate_coco(
    gt: Union[str, os.PathLike, Dict[str, Any], GroundTruth],
    dt: Union[str, os.PathLike, List[Dict[str, Any]], Detections],
    iou_type: str = "bbox",
    *,
    max_dets: Sequence[int] = (1, 10, 100),
) -> Dict[str, Any]:
    """COCO evaluation with pycocotools ``COCOeval`` semantics (see the module docstring).

    Args:
        gt (str, dict or GroundTruth): COCO-format ground truth.
        dt (str, list[dict] or Detections): results ``{image_id, category_id, score, bbox and/or
            segmentation}``.
        iou_type (str): "bbox" or "segm".
        max_dets (sequence of 3 int): limits per (image, category).

    Returns:
        dict: ``AP, AP50, AP75, APs, APm, APl, AR@1, AR@10, AR@100, ARs@100, ARm@100, ARl@100``
        (fractions, -1 when undefined; equal to ``COCOeval.stats``), ``stats`` (the 12 values in
        ``COCOeval`` order) and ``per_category`` (``{id, name, AP, num_gt, num_dt}``).
    """
    with gc_paused():
        ev = COCOStyleEval(gt, dt, iou_type, max_dets=max_dets).run()
    m = ev.max_dets
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl", f"AR@{m[0]}", f"AR@{m[1]}",
             f"AR@{m[2]}", f"ARs@{m[2]}", f"ARm@{m[2]}", f"ARl@{m[2]}"]
    out: Dict[str, Any] = OrderedDict((k, float(v)) for k, v in zip(names, ev.stats))
    out["stats"] = [float(v) for v in ev.stats]
    out["per_category"] = [
        {"id": int(c["id"]), "name": c.get("name", str(c["id"])), "AP": float(a),
         "num_gt": int(g), "num_dt": int(k)}
        for c, a, g, k in zip(ev.gt.categories, ev.per_category_ap(), ev.num_gt, ev.num_dt)]
    return out
