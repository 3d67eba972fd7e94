# Copyright (c) det_ext authors.
"""LVIS-style (federated) evaluation with the LVIS API's exact semantics, without the ``lvis``
package.

Semantics reproduced (``lvis`` 0.5.3 ``LVISResults`` + ``LVISEval``):

- at most ``max_dets`` (300) results per image, the highest scores first (ties: input order); the
  optional per-category cap (Fixed AP, as the LVIS 2021 challenge branch) keeps the top results of
  every category over the whole dataset after that;
- detection area: box ``w * h`` when the results carry ``bbox`` (as the API does, also for segm:
  pass segmentation-only results, as Detectron2 does, to use mask areas), else the mask area;
  ground-truth area: the ``area`` field; annotations and results with area <= 0 are dropped;
- federated: a result counts only on images where its category is annotated (positive) or listed
  in ``neg_category_ids``; unmatched results of ``not_exhaustive_category_ids`` are ignored;
- area ranges all/small/medium/large with inclusive bounds, IoU thresholds 0.50:0.05:0.95,
  101 recall points, precision interpolated to the right, means over entries > -1;
- results ``AP, AP50, AP75, APs, APm, APl, APr, APc, APf, AR@300, ARs@300, ARm@300, ARl@300``
  (fractions; -1 where undefined, e.g. APr without rare categories).

Differences: bad input raises :class:`EvaluationInputError` naming the entry (the API asserts or
crashes), results on unknown categories are an error (the API drops them silently), and an empty
result list gives zeros (the API crashes).
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from .accumulate import accumulate
from .detections import Detections, load_detections, top_k_per_group
from .ground_truth import GroundTruth, load_ground_truth, pair_keys
from .matching import MatchProblem, gt_ignored_by_area, match_detections
from .prepare import (AREA_LABELS, AREA_RANGES, IOU_THRS, REC_THRS, check_iou_type,
                      detection_areas, gc_paused, index_detections, make_pair_iou, uses_box_area)
from .results import BinsSpec, bin_results, parse_bins, per_category_results

__all__ = ["LVISStyleEval", "evaluate_lvis", "FREQUENCY_GROUPS"]

logger = logging.getLogger(__name__)

FREQUENCY_GROUPS = ("r", "c", "f")


class LVISStyleEval:
    """Federated LVIS evaluation of one result set.

    Args:
        gt (str, dict or GroundTruth): LVIS-format ground truth.
        dt (str, list[dict] or Detections): results.
        iou_type (str): "bbox" or "segm".
        max_dets (int or None): results kept per image (LVIS: 300); None or < 0 keeps all.
        max_dets_per_cat (int or None): results kept per category over the dataset (Fixed AP:
            10000, usually with ``max_dets=None``); None keeps all.

    Attributes (after :meth:`run`):
        precision (np.ndarray): float64 [T=10, R=101, K, A=4], -1 where undefined.
        recall (np.ndarray): float64 [T, K, A].
        results (OrderedDict): the LVIS API's ``get_results()`` keys.
    """

    def __init__(self, gt: Union[str, os.PathLike, Dict[str, Any], GroundTruth],
                 dt: Union[str, os.PathLike, List[Dict[str, Any]], Detections],
                 iou_type: str = "bbox", *, max_dets: Optional[int] = 300,
                 max_dets_per_cat: Optional[int] = None) -> None:
        self.iou_type = check_iou_type(iou_type)
        self.gt = load_ground_truth(gt)
        self.dets = load_detections(dt, iou_type)
        self.max_dets = max_dets if max_dets is not None and max_dets >= 0 else None
        self.max_dets_per_cat = (max_dets_per_cat if max_dets_per_cat is not None
                                 and max_dets_per_cat >= 0 else None)
        self.iou_thrs, self.rec_thrs = IOU_THRS, REC_THRS
        self.area_ranges, self.area_labels = AREA_RANGES, AREA_LABELS
        self.precision: Optional[np.ndarray] = None
        self.recall: Optional[np.ndarray] = None
        self.results: Dict[str, float] = OrderedDict()

    @property
    def ar_key(self) -> str:
        return f"AR@{self.max_dets if self.max_dets is not None else 'all'}"

    def frequency_groups(self) -> List[np.ndarray]:
        """Category indices of the rare, common and frequent groups (from ``frequency``)."""
        freq = [c.get("frequency") for c in self.gt.categories]
        bad = [c["id"] for c, f in zip(self.gt.categories, freq) if f not in FREQUENCY_GROUPS]
        if bad:
            logger.warning("%d categories have no 'frequency' in r/c/f (e.g. id %s); they are in "
                           "no APr/APc/APf group", len(bad), bad[0])
        return [np.array([i for i, f in enumerate(freq) if f == g], dtype=np.int64)
                for g in FREQUENCY_GROUPS]

    def _select(self, img: np.ndarray, cat: np.ndarray) -> Tuple[np.ndarray, Optional[int]]:
        """Indices (ascending) of the results kept by the per-image and per-category limits, and
        the first of them in the list the LVIS API builds (decides box vs. mask areas)."""
        d = self.dets
        n = len(d)
        keep = np.ones(n, dtype=bool)
        order = np.arange(n, dtype=np.int64)
        if self.max_dets is not None and n:
            if np.bincount(img).max() > self.max_dets:
                keep = top_k_per_group(img, d.scores, order, self.max_dets)
            if self.max_dets_per_cat is not None:
                # The API regroups the list by image (in order of first appearance); within an
                # image results keep input order (score order if cut: ties keep input order).
                uniq, first = np.unique(img, return_index=True)
                first_seen = np.zeros(self.gt.num_images, dtype=np.int64)
                first_seen[uniq] = first
                order = first_seen[img] * n + order
        if self.max_dets_per_cat is not None and n:
            sub = np.flatnonzero(keep)
            keep[sub[~top_k_per_group(cat[sub], d.scores[sub], order[sub],
                                      self.max_dets_per_cat)]] = False
        kept = np.flatnonzero(keep)
        if not len(kept):
            return kept, None
        if self.max_dets is not None and self.max_dets_per_cat is None:
            same = kept[img[kept] == img[0]]  # the API's list starts with the image of result 0
            return kept, int(same[0]) if len(same) else int(kept[0])
        return kept, int(kept[np.argmin(order[kept])])

    def run(self) -> "LVISStyleEval":
        """Evaluates; fills ``precision``, ``recall`` and ``results``. Returns self."""
        with gc_paused():
            return self._run()

    def _run(self) -> "LVISStyleEval":
        gt, d = self.gt, self.dets
        if not gt.has_federated_fields:
            logger.warning("%s: images have no 'neg_category_ids'; results on categories not "
                           "annotated in an image are not evaluated there (LVIS rules)", gt.source)
        img_all, cat_all = index_detections(gt, d)
        kept, first = self._select(img_all, cat_all)
        box_area = uses_box_area(d, first)
        area, rles = detection_areas(gt, d, img_all, kept, box_area)

        g_ok = (gt.ann_area > 0) & (gt.ann_area < np.inf)
        g_idx = np.flatnonzero(g_ok)
        num_k = gt.num_categories
        g_img, g_cat = gt.ann_img[g_idx], gt.ann_cat[g_idx]
        allowed = np.union1d(pair_keys(g_img, g_cat, num_k), gt.neg_keys)
        keys = pair_keys(img_all[kept], cat_all[kept], num_k)
        ok = (area > 0) & (area < np.inf) & _isin_sorted(keys, allowed)
        sel = np.flatnonzero(ok)
        dt_idx = kept[sel]
        area, keys = area[sel], keys[sel]
        if rles is not None:
            rles = [rles[i] for i in sel.tolist()]
        nel = _isin_sorted(keys, gt.nel_keys)
        dt_img, dt_cat, score = img_all[dt_idx], cat_all[dt_idx], d.scores[dt_idx]
        g_area, g_ign = gt.ann_area[g_idx], gt.ann_ignore[g_idx]
        no_crowd = np.zeros(len(g_idx), dtype=bool)
        problem = MatchProblem(
            num_cats=num_k, gt_img=g_img, gt_cat=g_cat, gt_area=g_area, gt_ignore=g_ign,
            gt_crowd=no_crowd, gt_id_nonzero=gt.ann_id_nonzero[g_idx], dt_img=dt_img,
            dt_cat=dt_cat, dt_score=score,
            pair_iou=make_pair_iou(gt, g_idx, d, dt_idx, img_all, self.iou_type, rles, no_crowd))
        match = match_detections(problem, self.area_ranges, self.iou_thrs)
        base_ig = np.stack([(area < lo) | (area > hi) | nel for lo, hi in self.area_ranges])
        g_ig = gt_ignored_by_area(g_ign, g_area, self.area_ranges)  # [A, G]
        num_gt = np.stack([np.bincount(g_cat[~g_ig[a]], minlength=num_k)
                           for a in range(len(self.area_ranges))], axis=1)
        self.precision, self.recall = accumulate(dt_cat, dt_img, score, base_ig, match, num_gt,
                                                 self.rec_thrs)
        self.num_gt = num_gt[:, 0]
        self.num_dt = np.bincount(dt_cat, minlength=num_k)
        self._summarize()
        logger.info("LVIS-style %s evaluation: %d images, %d categories, %d of %d results "
                    "evaluated", self.iou_type, gt.num_images, num_k, len(dt_idx), len(d))
        return self

    def _mean(self, s: np.ndarray) -> float:
        v = s[s > -1]
        return float(np.mean(v)) if len(v) else -1.0

    def summarize_ap(self, iou_thr: Optional[float] = None, area: str = "all",
                     cat_idx: Optional[np.ndarray] = None) -> float:
        """Mean precision over thresholds, recalls and the given categories (-1 if none)."""
        s = self.precision
        if iou_thr is not None:
            s = s[np.where(iou_thr == self.iou_thrs)[0]]
        a = [i for i, lbl in enumerate(self.area_labels) if lbl == area]
        s = s[:, :, cat_idx, a] if cat_idx is not None else s[:, :, :, a]
        return self._mean(s)

    def summarize_ar(self, area: str = "all") -> float:
        """Mean final recall over thresholds and categories for an area range (-1 if none)."""
        a = [i for i, lbl in enumerate(self.area_labels) if lbl == area]
        return self._mean(self.recall[:, :, a])

    def _summarize(self) -> None:
        r = self.results
        r["AP"] = self.summarize_ap()
        r["AP50"] = self.summarize_ap(iou_thr=0.50)
        r["AP75"] = self.summarize_ap(iou_thr=0.75)
        r["APs"] = self.summarize_ap(area="small")
        r["APm"] = self.summarize_ap(area="medium")
        r["APl"] = self.summarize_ap(area="large")
        for name, group in zip(("APr", "APc", "APf"), self.frequency_groups()):
            r[name] = self.summarize_ap(cat_idx=group)
        suffix = self.ar_key[2:]
        r[f"AR{suffix}"] = self.summarize_ar()
        for area in ("small", "medium", "large"):
            r[f"AR{area[0]}{suffix}"] = self.summarize_ar(area)

    def per_category_ap(self) -> np.ndarray:
        """float64 [K] AP of every category (area all), -1 where it has no ground truth."""
        p = self.precision[:, :, :, 0]
        valid = p > -1
        cnt = valid.sum(axis=(0, 1))
        tot = np.where(valid, p, 0.0).sum(axis=(0, 1))
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), -1.0)


def _isin_sorted(values: np.ndarray, sorted_unique: np.ndarray) -> np.ndarray:
    if len(sorted_unique) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_unique, values), len(sorted_unique) - 1)
    return sorted_unique[pos] == values


def evaluate_lvis(
    gt: Union[str, os.PathLike, Dict[str, Any], GroundTruth],
    dt: Union[str, os.PathLike, List[Dict[str, Any]], Detections],
    iou_type: str = "bbox",
    *,
    max_dets: Optional[int] = 300,
    max_dets_per_cat: Optional[int] = None,
    bins: BinsSpec = None,
    count_key: str = "instance_count",
) -> Dict[str, Any]:
    """LVIS-style evaluation with the LVIS API's semantics (see the module docstring).

    Args:
        gt (str, dict or GroundTruth): LVIS-format ground truth (file or parsed JSON). Categories
            carry ``frequency`` (r/c/f) and training counts; images carry ``neg_category_ids``
            and ``not_exhaustive_category_ids``.
        dt (str, list[dict] or Detections): results ``{image_id, category_id, score, bbox
            [x, y, w, h] and/or segmentation (RLE)}`` or a results file.
        iou_type (str): "bbox" or "segm".
        max_dets (int or None): results kept per image (300); None or -1 for no limit.
        max_dets_per_cat (int or None): results kept per category (Fixed AP uses 10000 with
            ``max_dets=None``).
        bins: training-count bins (:func:`~det_ext.evaluation.results.parse_bins`; default
            :data:`~det_ext.evaluation.results.LVIS_BINS`).
        count_key (str): category field with the training count for the bins.

    Returns:
        dict: the LVIS API's ``get_results()`` keys (``AP, AP50, AP75, APs, APm, APl, APr, APc,
        APf, AR@300, ARs@300, ARm@300, ARl@300``; fractions, -1 when undefined; the AR keys
        carry ``max_dets``), plus ``bins`` (list of ``{name, range, AP, num_categories}``),
        ``per_category`` (list of ``{id, name, frequency, <count_key>, AP, num_gt, num_dt}``)
        and ``params``.

    Raises:
        EvaluationInputError: malformed input, naming the offending entry.
    """
    bins = parse_bins(bins)  # fail early on a bad specification
    with gc_paused():
        ev = LVISStyleEval(gt, dt, iou_type, max_dets=max_dets,
                           max_dets_per_cat=max_dets_per_cat).run()
    out: Dict[str, Any] = OrderedDict(ev.results)
    out["bins"] = bin_results(ev.precision, ev.gt.categories, bins, count_key)
    out["per_category"] = per_category_results(ev.gt.categories, ev.per_category_ap(), ev.num_gt,
                                               ev.num_dt, count_key)
    out["params"] = {"iou_type": iou_type, "max_dets": ev.max_dets,
                     "max_dets_per_cat": ev.max_dets_per_cat, "bins_count_key": count_key,
                     "num_images": int(ev.gt.num_images), "num_categories": int(len(ev.gt.cat_ids)),
                     "num_results": int(len(ev.dets))}
    return out
