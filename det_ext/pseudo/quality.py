# Copyright (c) det_ext authors.
"""Quality of pseudo boxes against ground truth: precision/recall at an IoU threshold and mean IoU,
overall and per frequency group (r/c/f of the category)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List

import numpy as np

from .selection import box_iou

__all__ = ["evaluate_pseudo_boxes"]


def _xyxy(boxes: List[List[float]]) -> np.ndarray:
    a = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([a[:, :2], a[:, :2] + a[:, 2:]], axis=1)


def _summary(tp: int, n_pred: int, n_gt: int, ious: List[float]) -> Dict[str, Any]:
    return {
        "precision_iou50": tp / n_pred if n_pred else 0.0,
        "recall_iou50": tp / n_gt if n_gt else 0.0,
        "mean_iou": float(np.mean(ious)) if ious else 0.0,
        "num_pseudo": n_pred,
        "num_gt": n_gt,
        "num_true_positive": tp,
    }


def evaluate_pseudo_boxes(
    pseudo: Dict[str, Any], gt: Dict[str, Any], iou_thresh: float = 0.5
) -> Dict[str, Any]:
    """Greedy one-to-one matching per (image, category), pseudo boxes by decreasing
    ``pseudo_score``.

    A pseudo box is a true positive when it matches a still unmatched ground-truth box of its
    category with IoU >= ``iou_thresh`` (the one of highest IoU). Precision = TP / pseudo boxes;
    recall = TP / ground-truth boxes of the images in ``pseudo["images"]``; ``mean_iou`` = mean IoU
    of the true-positive pairs; ``mean_best_iou`` = mean over pseudo boxes of the best IoU with any
    ground-truth box of their category (0 if none).

    Args:
        pseudo (dict): COCO-format pseudo labels (``images``, ``annotations``).
        gt (dict): LVIS/COCO ground truth with ``categories[].frequency`` for the groups.

    Returns:
        dict: overall numbers plus ``by_group`` {"r", "c", "f"} with the same keys.
    """
    freq = {c["id"]: c.get("frequency", "f") for c in gt["categories"]}
    images = {im["id"] for im in pseudo["images"]}
    gt_boxes: Dict[tuple, List[List[float]]] = defaultdict(list)
    for a in gt["annotations"]:
        if a["image_id"] in images and not a.get("iscrowd", 0):
            gt_boxes[(a["image_id"], a["category_id"])].append(a["bbox"])
    pred: Dict[tuple, List[Dict[str, Any]]] = defaultdict(list)
    for a in pseudo["annotations"]:
        pred[(a["image_id"], a["category_id"])].append(a)
    stats = {g: {"tp": 0, "pred": 0, "gt": 0, "ious": [], "best": []} for g in "rcf"}
    for key, boxes in gt_boxes.items():
        stats[freq[key[1]]]["gt"] += len(boxes)
    for key, anns in pred.items():
        s = stats[freq[key[1]]]
        anns = sorted(anns, key=lambda a: -a.get("pseudo_score", 0.0))
        s["pred"] += len(anns)
        g = _xyxy(gt_boxes.get(key, []))
        if not len(g):
            s["best"] += [0.0] * len(anns)
            continue
        iou = box_iou(_xyxy([a["bbox"] for a in anns]), g)
        s["best"] += iou.max(1).tolist()
        free = np.ones(len(g), dtype=bool)
        for i in range(len(anns)):
            cand = np.where(free, iou[i], -1.0)
            j = int(cand.argmax())
            if cand[j] >= iou_thresh:
                free[j] = False
                s["tp"] += 1
                s["ious"].append(float(iou[i, j]))
    out = _summary(
        sum(s["tp"] for s in stats.values()),
        sum(s["pred"] for s in stats.values()),
        sum(s["gt"] for s in stats.values()),
        [x for s in stats.values() for x in s["ious"]],
    )
    best = [x for s in stats.values() for x in s["best"]]
    out["mean_best_iou"] = float(np.mean(best)) if best else 0.0
    out["by_group"] = {
        g: {
            **_summary(s["tp"], s["pred"], s["gt"], s["ious"]),
            "mean_best_iou": float(np.mean(s["best"])) if s["best"] else 0.0,
        }
        for g, s in stats.items()
    }
    return out
