# Copyright (c) det_ext authors.
"""Box selection: the proposal that best fits a word's activation map (PB-OVD section 7).

score(box) = sum of the normalised, thresholded map inside the box / area ** alpha. Boxes are
clipped to the image (not skipped) and keep float coordinates; flat or empty maps and maps that no
proposal covers give no box.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

__all__ = ["normalize_map", "select_boxes", "merge_maps", "box_iou"]


def merge_maps(maps: List[np.ndarray], eps: float = 1e-12) -> Optional[np.ndarray]:
    """Mean of several min-max normalised maps of one category in one image (one per mention);
    flat maps are left out. Returns None when every map is flat."""
    good = []
    for m in maps:
        m = np.asarray(m, dtype=np.float64)
        lo, hi = float(m.min()), float(m.max())
        if hi - lo > eps * max(1.0, abs(hi)):
            good.append((m - lo) / (hi - lo))
    return None if not good else np.mean(good, axis=0)


def normalize_map(
    cam: np.ndarray, height: int, width: int, threshold: float = 0.5, eps: float = 1e-12
) -> Optional[np.ndarray]:
    """Nearest upsampling to the original image size, min-max normalisation to [0, 1] and the cut of
    values below ``threshold`` x max (the reference's normalisation).

    Args:
        cam (ndarray): [h, w] map on the patch grid.
        height, width (int): original image size (undoes the aspect-distorting resize).

    Returns:
        ndarray [height, width] float64, or None for a flat (constant or empty) map.
    """
    cam = np.asarray(cam, dtype=np.float64)
    if cam.size == 0 or not np.all(np.isfinite(cam)):
        return None
    h, w = cam.shape
    rows = np.minimum((np.arange(height) * h) // height, h - 1)
    cols = np.minimum((np.arange(width) * w) // width, w - 1)
    up = cam[rows][:, cols]
    lo, hi = float(up.min()), float(up.max())
    if hi - lo <= eps * max(1.0, abs(hi)):
        return None
    up = (up - lo) / (hi - lo)
    up[up < threshold] = 0.0
    return up


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of XYXY boxes."""
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def _region_sums(integral: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.floor(boxes[:, 0]).astype(int)
    y0 = np.floor(boxes[:, 1]).astype(int)
    x1 = np.ceil(boxes[:, 2]).astype(int)
    y1 = np.ceil(boxes[:, 3]).astype(int)
    return integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]


def select_boxes(
    act: np.ndarray,
    proposals: np.ndarray,
    alpha: float = 0.5,
    max_boxes: int = 1,
    min_area: float = 1.0,
    overlap_iou: float = 0.5,
    score_weight: float = 0.0,
) -> List[Tuple[np.ndarray, float]]:
    """Chooses up to ``max_boxes`` proposals for one activation map.

    The first box is the argmax of sum(act in box) / area ** alpha. For counted mentions
    (``max_boxes`` > 1, e.g. "three circles") the activation inside each chosen box is removed and
    proposals overlapping a chosen box by more than ``overlap_iou`` are dropped before the next
    pick.

    Args:
        act (ndarray): [H, W] normalised activation (see :func:`normalize_map`).
        proposals (ndarray): [K, 4] XYXY boxes in image pixels (clipped here).
        alpha (float): area exponent.
        max_boxes (int): boxes to pick at most.
        score_weight (float): beta > 0 multiplies the fit by (proposal score) ** beta (column 4 of
            ``proposals``, e.g. RPN objectness); 0 ignores proposal scores (PB-OVD).

    Returns:
        list of (box [4] XYXY float, coverage): coverage = activation mass inside the box / total
        mass of the map, in (0, 1]. Empty when no proposal holds any activation.
    """
    height, width = act.shape
    total = float(act.sum())
    if total <= 0 or len(proposals) == 0:
        return []
    proposals = np.asarray(proposals, dtype=np.float64)
    boxes = proposals[:, :4].copy()
    prior = np.ones(len(boxes))
    if score_weight > 0 and proposals.shape[1] > 4:
        prior = np.clip(proposals[:, 4], 0.0, None) ** score_weight
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = area >= min_area
    boxes, area, prior = boxes[keep], area[keep], prior[keep]
    act = act.copy()
    chosen: List[Tuple[np.ndarray, float]] = []
    while len(chosen) < max_boxes and len(boxes):
        integral = np.zeros((height + 1, width + 1))
        integral[1:, 1:] = act.cumsum(0).cumsum(1)
        mass = _region_sums(integral, boxes)
        score = mass / area**alpha * prior
        best = int(np.argmax(score))
        if not score[best] > 0:
            break
        box = boxes[best]
        chosen.append((box.copy(), float(mass[best] / total)))
        x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
        x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
        act[y0:y1, x0:x1] = 0.0
        far = box_iou(boxes, box[None])[:, 0] <= overlap_iou
        boxes, area, prior = boxes[far], area[far], prior[far]
    return chosen
