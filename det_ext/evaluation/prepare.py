# Copyright (c) det_ext authors.
"""Shared preparation: id lookup, detection areas and geometry, IoU providers, parameters."""
from __future__ import annotations

import contextlib
import gc
from typing import Any, Iterator, List, Optional, Tuple

import numpy as np

from .detections import Detections
from .geometry import (box_corners, box_pair_iou, mask_group_ious, rle_areas, rle_boxes,
                       segmentation_to_rle)
from .ground_truth import EvaluationInputError, GroundTruth
from .matching import PairIoU

__all__ = ["gc_paused", "IOU_THRS", "REC_THRS", "AREA_RANGES", "AREA_LABELS", "index_detections",
           "uses_box_area", "detection_areas", "make_pair_iou", "check_iou_type"]

# The reference parameters (np.linspace as in both APIs, so the values are bit-identical).
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RANGES = [[0 ** 2, 1e5 ** 2], [0 ** 2, 32 ** 2], [32 ** 2, 96 ** 2], [96 ** 2, 1e5 ** 2]]
AREA_LABELS = ["all", "small", "medium", "large"]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pauses Python's cyclic garbage collector: evaluation creates no reference cycles, and with
    hundreds of thousands of result dicts alive every collection would traverse all of them."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def check_iou_type(iou_type: str) -> str:
    """Returns ``iou_type`` if it is "bbox" or "segm", else raises EvaluationInputError."""
    if iou_type not in ("bbox", "segm"):
        raise EvaluationInputError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    return iou_type


def index_detections(gt: GroundTruth, dets: Detections) -> Tuple[np.ndarray, np.ndarray]:
    """Image and category indices of the detections.

    Raises:
        EvaluationInputError: a detection on an image or category absent from the ground truth,
            naming the first such detection.
    """
    img = gt.image_index(dets.image_ids)
    cat = gt.category_index(dets.category_ids)
    for arr, what in ((img, "image_id"), (cat, "category_id")):
        bad = arr < 0
        if bad.any():
            i = int(np.argmax(bad))
            raise EvaluationInputError(
                f"{dets.describe(i)}: {what} is not in the ground truth {gt.source} "
                f"({int(bad.sum())} results affected)")
    return img, cat


def uses_box_area(dets: Detections, first: Optional[int]) -> bool:
    """Whether detection areas come from boxes: as in the LVIS API and pycocotools, decided by
    whether the first result carries a ``bbox`` (pass segmentation-only results for mask areas).
    """
    return bool(first is not None and dets.has_box[first])


def detection_rles(gt: GroundTruth, dets: Detections, img_idx: np.ndarray,
                   idx: np.ndarray) -> List[Any]:
    """Compressed RLEs of detections ``idx`` (boxes become box-shaped masks, as in the LVIS API).

    Raises:
        EvaluationInputError: a detection without a segmentation or a box.
    """
    out = []
    segs = dets.segmentations
    for i in idx.tolist():
        seg = segs[i] if segs is not None else None
        if isinstance(seg, dict) and "size" in seg and isinstance(seg.get("counts"), (str, bytes)):
            out.append(seg)  # compressed RLE: used as is (the common case)
            continue
        if seg is None:
            if not dets.has_box[i]:
                raise EvaluationInputError(f"{dets.describe(i)} has no 'segmentation'")
            x, y, w, h = dets.boxes[i].tolist()
            seg = [[x, y, x, y + h, x + w, y + h, x + w, y]]
        h_img, w_img = gt.img_hw[img_idx[i]]
        out.append(segmentation_to_rle(seg, int(h_img), int(w_img), dets.describe(i)))
    return out


def detection_areas(gt: GroundTruth, dets: Detections, img_idx: np.ndarray, idx: np.ndarray,
                    box_area: bool) -> Tuple[np.ndarray, Optional[List[Any]]]:
    """Areas of detections ``idx``: box ``w * h`` or mask area; also their RLEs when computed.

    Raises:
        EvaluationInputError: box areas are used but a detection has no ``bbox``.
    """
    if box_area:
        missing = ~dets.has_box[idx]
        if missing.any():
            raise EvaluationInputError(
                f"{dets.describe(int(idx[np.argmax(missing)]))} has no 'bbox' although the first "
                "result has one (results must be uniform)")
        return dets.boxes[idx, 2] * dets.boxes[idx, 3], None
    rles = detection_rles(gt, dets, img_idx, idx)
    return rle_areas(rles), rles


def make_pair_iou(gt: GroundTruth, gt_idx: np.ndarray, dets: Detections, dt_idx: np.ndarray,
                  img_full: np.ndarray, iou_type: str, dt_rles: Optional[List[Any]],
                  gt_crowd: np.ndarray) -> PairIoU:
    """IoU provider for :func:`~det_ext.evaluation.matching.match_detections`.

    Args:
        gt (GroundTruth): ground truth; ``gt_idx`` [G'] maps problem GT indices to its annotations.
        dets (Detections): detections; ``dt_idx`` [N'] maps problem indices to its rows.
        img_full (np.ndarray): int64 [N] image index of every row of ``dets``.
        iou_type (str): "bbox" or "segm".
        dt_rles (list or None): [N'] RLEs of the problem detections when already computed.
        gt_crowd (np.ndarray): bool [G'] crowd flags.
    """
    if iou_type == "bbox":
        boxes = dets.boxes
        no_box = ~dets.has_box[dt_idx]
        if no_box.any():  # segmentation-only results: boxes around the masks, as the APIs do
            sub = np.flatnonzero(no_box)
            rles = [dt_rles[i] for i in sub] if dt_rles is not None else detection_rles(
                gt, dets, img_full, dt_idx[sub])
            boxes = boxes.copy()
            boxes[dt_idx[sub]] = rle_boxes(rles)
        gcorn = box_corners(gt.ann_bbox[gt_idx])
        no_gt_box = np.isnan(gcorn[:, 0])

        def pair_iou(pd: np.ndarray, pg: np.ndarray, nd: np.ndarray, ng: np.ndarray) -> np.ndarray:
            if no_gt_box.any():
                bad = no_gt_box[pg]
                if bad.any():
                    ann = gt.anns[gt_idx[pg[np.argmax(bad)]]]
                    raise EvaluationInputError(f"{gt.source}: annotations[id={ann.get('id')}] has "
                                               "no 'bbox' (needed for iou_type='bbox')")
            return box_pair_iou(box_corners(boxes[dt_idx[pd]]), gcorn[pg], gt_crowd[pg])
        return pair_iou

    def pair_iou_segm(pd: np.ndarray, pg: np.ndarray, nd: np.ndarray, ng: np.ndarray
                      ) -> np.ndarray:
        out = np.empty(len(pd), dtype=np.float64)
        off = 0
        for m, n in zip(nd.tolist(), ng.tolist()):
            sz = m * n
            d = pd[off:off + sz:n]
            g = pg[off:off + n]
            d_rles = ([dt_rles[i] for i in d.tolist()] if dt_rles is not None
                      else detection_rles(gt, dets, img_full, dt_idx[d]))
            out[off:off + sz] = mask_group_ious(d_rles, [gt.ann_rle(int(gt_idx[j])) for j in g],
                                                gt_crowd[g])
            off += sz
        return out
    return pair_iou_segm
