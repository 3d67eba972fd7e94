# Copyright (c) det_ext authors.
"""IoU of box pairs (bit-identical to pycocotools' ``bbIou``) and mask helpers."""
from __future__ import annotations

from typing import Any, List, Sequence

import numpy as np
import pycocotools.mask as mask_utils

from .ground_truth import EvaluationInputError

__all__ = ["box_corners", "box_pair_iou", "segmentation_to_rle", "mask_group_ious", "rle_areas",
           "rle_boxes"]


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """float64 [N, 5]: ``x1, y1, x1 + w, y1 + h, w * h`` of XYWH boxes [N, 4].

    These are the exact intermediate values of pycocotools' ``bbIou`` (``D[2] + D[0]``, ...).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] + b[:, 0], b[:, 3] + b[:, 1], b[:, 2] * b[:, 3]],
                    axis=1)


def box_pair_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of paired boxes, with the same floating-point operations as pycocotools' ``bbIou``.

    For a crowd ground truth the union is the detection's area (pycocotools' convention).

    Args:
        dt (np.ndarray): float64 [P, 5] detection corners (:func:`box_corners`).
        gt (np.ndarray): float64 [P, 5] ground-truth corners.
        crowd (np.ndarray): bool [P], whether the ground truth is a crowd region.

    Returns:
        np.ndarray: float64 [P] IoU (0 where the boxes do not overlap).
    """
    w = np.minimum(dt[:, 2], gt[:, 2])
    w -= np.maximum(dt[:, 0], gt[:, 0])
    h = np.minimum(dt[:, 3], gt[:, 3])
    h -= np.maximum(dt[:, 1], gt[:, 1])
    ok = (w > 0) & (h > 0)
    inter = w
    inter *= h
    union = dt[:, 4] + gt[:, 4]
    union -= inter
    if crowd.any():
        union = np.where(crowd, dt[:, 4], union)
    out = np.zeros(len(dt), dtype=np.float64)
    np.divide(inter, union, out=out, where=ok)
    return out


def segmentation_to_rle(segm: Any, height: int, width: int, where: str) -> Any:
    """Converts a polygon list, an uncompressed RLE or a compressed RLE to a compressed RLE.

    Mirrors the LVIS API's ``ann_to_rle`` (polygons of one object are merged).

    Args:
        segm: the ``segmentation`` field.
        height, width (int): image size (needed for polygons and uncompressed RLE).
        where (str): the entry, for error messages.
    """
    if isinstance(segm, dict):
        counts = segm.get("counts")
        if "size" not in segm or counts is None:
            raise EvaluationInputError(f"{where}.segmentation: RLE needs 'size' and 'counts'")
        if isinstance(counts, list):
            if height < 0 or width < 0:
                raise EvaluationInputError(f"{where}: image height/width needed for RLE counts")
            return mask_utils.frPyObjects(segm, height, width)
        if not isinstance(counts, (str, bytes)):
            raise EvaluationInputError(f"{where}.segmentation.counts must be a string or list")
        return segm
    if isinstance(segm, list):
        if height < 0 or width < 0:
            raise EvaluationInputError(f"{where}: image height/width needed for polygons")
        polys = [p for p in segm if isinstance(p, (list, tuple)) and len(p) >= 6]
        if len(polys) != len(segm) or not polys:
            raise EvaluationInputError(
                f"{where}.segmentation: polygons must be lists of at least 6 coordinates")
        try:
            return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
        except (TypeError, ValueError) as e:
            raise EvaluationInputError(f"{where}.segmentation: bad polygon ({e})") from None
    raise EvaluationInputError(f"{where}.segmentation must be polygons or an RLE dict, "
                               f"got {type(segm).__name__}")


def rle_areas(rles: List[Any]) -> np.ndarray:
    """float64 [N] pixel areas of compressed RLEs (pycocotools ``area``)."""
    out = np.zeros(len(rles), dtype=np.float64)
    # pycocotools 2.0.11's ``area`` fails on lists of 256 or more RLEs: go in chunks.
    for i in range(0, len(rles), 255):
        out[i:i + 255] = mask_utils.area(list(rles[i:i + 255]))
    return out


def rle_boxes(rles: List[Any]) -> np.ndarray:
    """float64 [N, 4] XYWH boxes around compressed RLEs (pycocotools ``toBbox``)."""
    if not rles:
        return np.zeros((0, 4), dtype=np.float64)
    return np.asarray(mask_utils.toBbox(list(rles)), dtype=np.float64).reshape(-1, 4)


def mask_group_ious(dt_rles: Sequence[Any], gt_rles: Sequence[Any],
                    gt_crowd: Sequence[int]) -> np.ndarray:
    """Mask IoU of one (image, category) group via pycocotools.

    Args:
        dt_rles: the group's detections, in score order (M of them).
        gt_rles: the group's ground truth (N of them).
        gt_crowd: N crowd flags.

    Returns:
        np.ndarray: float64 [M * N], row-major (detection-major) IoU.
    """
    ious = mask_utils.iou(list(dt_rles), list(gt_rles), [int(c) for c in gt_crowd])
    return np.asarray(ious, dtype=np.float64).reshape(-1)
