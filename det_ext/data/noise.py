# Copyright (c) det_ext authors.
"""Synthetic label and box noise for COCO/LVIS-format detection datasets.

Box noise follows the paper's formula (verified through a secondary source): every coordinate of
every box is shifted independently, ``x1' = x1 + u``, ``u ~ U(-Nb*w, +Nb*w)`` (``x2`` likewise) and
``y1' = y1 + v``, ``v ~ U(-Nb*h, +Nb*h)`` (``y2`` likewise; scaling y by the height is the natural
reading, an option allows the width). Label noise relabels a fraction ``Nl`` of the boxes to another
category: uniformly to a different class (symmetric), to a different class drawn in proportion to
the class frequencies (prior: on a long-tailed set every label keeps a moderate noise rate, as in
web data, instead of rare labels being almost all wrong), to the next class (pair flip) or by a
user-supplied transition matrix. Every noisy annotation keeps the clean annotation's id in
``clean_id`` (and its clean box and category in ``clean_bbox`` / ``clean_category_id``) so that any
correction can be scored against the truth. Everything is deterministic given the seed.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Dict, Optional, Sequence

import numpy as np

from det_ext.utils.errors import DetExtInputError

__all__ = ["NoiseSpec", "NoiseSpecError", "add_box_noise", "add_label_noise", "make_noisy_dataset",
           "box_iou_xywh"]

LABEL_MODES = ("symmetric", "prior", "pairflip", "matrix")
DEGENERATE_MODES = ("reorder", "redraw")


class NoiseSpecError(DetExtInputError, ValueError):
    """Invalid noise parameters (rate outside [0, 1], bad transition matrix, ...)."""


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
    """Parameters of the synthetic noise.

    Attributes:
        label_rate (float): fraction Nl of the (non-crowd) boxes whose label is changed, in [0, 1].
            Exactly ``round(Nl * N)`` boxes are chosen (without replacement), so the realised rate
            equals the nominal one up to rounding.
        box_rate (float): box noise level Nb in [0, 1] (0.4 gives a mean IoU of about 0.45).
        seed (int): random seed; equal specs on equal input give identical output.
        label_mode (str): "symmetric" (uniform over the other classes), "prior" (the other classes
            in proportion to their frequency in ``labels``), "pairflip" (class k -> the next class
            in id order) or "matrix" (rows of ``transition`` give the flip distribution).
        transition (tuple or None): K x K row-stochastic matrix with a zero diagonal, over the
            categories in id order ("matrix" mode only).
        y_scale (str): "h" (y shifts scaled by the box height, default) or "w" (by the width).
        clip (bool): clip noisy boxes to the image.
        degenerate (str): a box whose x2' <= x1' (or y2' <= y1') is fixed by swapping the two
            coordinates ("reorder", default) or by drawing its shifts again ("redraw", 100 tries).
        min_size (float): minimum width/height in pixels of a noisy box (after clipping).
        keep_segmentation (bool): keep the clean masks on the noisy annotations (off by default:
            masks would contradict the noisy boxes).
    """

    label_rate: float = 0.0
    box_rate: float = 0.0
    seed: int = 0
    label_mode: str = "symmetric"
    transition: Optional[tuple] = None
    y_scale: str = "h"
    clip: bool = True
    degenerate: str = "reorder"
    min_size: float = 1.0
    keep_segmentation: bool = False

    def __post_init__(self) -> None:
        for field in ("label_rate", "box_rate"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise NoiseSpecError(f"noise {field} must be in [0, 1], got {value!r}")
        if self.label_mode not in LABEL_MODES:
            raise NoiseSpecError(f"noise label_mode must be one of {LABEL_MODES}, "
                                 f"got {self.label_mode!r}")
        if self.label_mode == "matrix" and self.transition is None:
            raise NoiseSpecError("noise label_mode 'matrix' needs a transition matrix")
        if self.y_scale not in ("h", "w"):
            raise NoiseSpecError(f"noise y_scale must be 'h' or 'w', got {self.y_scale!r}")
        if self.degenerate not in DEGENERATE_MODES:
            raise NoiseSpecError(f"noise degenerate must be one of {DEGENERATE_MODES}, "
                                 f"got {self.degenerate!r}")
        if not self.min_size > 0:
            raise NoiseSpecError(f"noise min_size must be > 0, got {self.min_size!r}")


def box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise IoU of two aligned arrays of XYWH boxes, shapes (N, 4) -> (N,)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0]),
                 0, None)
    ih = np.clip(np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1]),
                 0, None)
    inter = iw * ih
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return inter / np.maximum(union, 1e-12)


def _fix_axis(lo: np.ndarray, hi: np.ndarray, limit: Optional[np.ndarray], min_size: float):
    """Clips one axis to [0, limit] and enforces ``hi - lo >= min_size`` (arrays of shape (N,))."""
    if limit is not None:
        lo = np.clip(lo, 0.0, limit)
        hi = np.clip(hi, 0.0, limit)
    short = hi - lo < min_size
    if short.any():
        mid = (lo + hi) / 2
        lo = np.where(short, mid - min_size / 2, lo)
        hi = np.where(short, mid + min_size / 2, hi)
        if limit is not None:  # shift back inside the image, keeping the size
            shift_lo = np.clip(-lo, 0, None)
            shift_hi = np.clip(hi - limit, 0, None)
            lo, hi = lo + shift_lo - shift_hi, hi + shift_lo - shift_hi
            lo, hi = np.clip(lo, 0, limit), np.clip(hi, 0, limit)
    return lo, hi


def add_box_noise(boxes_xywh: np.ndarray, rate: float, rng: np.random.Generator,
                  image_wh: Optional[np.ndarray] = None, y_scale: str = "h",
                  degenerate: str = "reorder", min_size: float = 1.0) -> np.ndarray:
    """Shifts every coordinate of every box by a uniform amount proportional to the box size.

    Args:
        boxes_xywh (ndarray): (N, 4) clean boxes, XYWH in pixels.
        rate (float): noise level Nb in [0, 1].
        rng (np.random.Generator): random source.
        image_wh (ndarray or None): (N, 2) width and height of each box's image, to clip to.
        y_scale (str): "h" or "w", the size that scales the y shifts.
        degenerate (str): "reorder" or "redraw" (see :class:`NoiseSpec`).
        min_size (float): minimum size of a noisy box in pixels.

    Returns:
        ndarray: (N, 4) noisy boxes, XYWH.
    """
    boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    w, h = boxes[:, 2], boxes[:, 3]
    sy = h if y_scale == "h" else w
    scale = np.stack([w, sy, w, sy], axis=1) * rate
    xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
    noisy = xyxy + rng.uniform(-1.0, 1.0, size=(n, 4)) * scale
    if degenerate == "redraw":
        for _ in range(100):
            bad = (noisy[:, 2] <= noisy[:, 0]) | (noisy[:, 3] <= noisy[:, 1])
            if not bad.any():
                break
            noisy[bad] = xyxy[bad] + rng.uniform(-1.0, 1.0, size=(int(bad.sum()), 4)) * scale[bad]
    x1, x2 = np.minimum(noisy[:, 0], noisy[:, 2]), np.maximum(noisy[:, 0], noisy[:, 2])
    y1, y2 = np.minimum(noisy[:, 1], noisy[:, 3]), np.maximum(noisy[:, 1], noisy[:, 3])
    wlim = None if image_wh is None else np.asarray(image_wh, dtype=np.float64)[:, 0]
    hlim = None if image_wh is None else np.asarray(image_wh, dtype=np.float64)[:, 1]
    x1, x2 = _fix_axis(x1, x2, wlim, min_size)
    y1, y2 = _fix_axis(y1, y2, hlim, min_size)
    return np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)


def _check_transition(transition: Sequence[Sequence[float]], k: int) -> np.ndarray:
    mat = np.asarray(transition, dtype=np.float64)
    if mat.shape != (k, k):
        raise NoiseSpecError(f"noise transition matrix must be {k}x{k}, got shape {mat.shape}")
    if (mat < 0).any() or not np.allclose(mat.sum(1), 1.0) or not np.allclose(np.diag(mat), 0):
        raise NoiseSpecError("noise transition matrix must be row-stochastic with a zero diagonal")
    return mat


def _prior_transition(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """K x K flip distribution of the "prior" mode: row k is the class frequencies of ``labels``
    with class k removed, renormalised (uniform over the others when they are all absent)."""
    freq = np.bincount(labels, minlength=num_classes).astype(np.float64)
    mat = np.tile(freq, (num_classes, 1))
    np.fill_diagonal(mat, 0.0)
    empty = mat.sum(1) == 0
    mat[empty] = 1.0
    mat[empty, np.flatnonzero(empty)] = 0.0
    return mat / mat.sum(1, keepdims=True)


def add_label_noise(labels: np.ndarray, num_classes: int, rate: float, rng: np.random.Generator,
                    mode: str = "symmetric",
                    transition: Optional[Sequence[Sequence[float]]] = None) -> np.ndarray:
    """Changes the label of exactly ``round(rate * N)`` randomly chosen boxes to another class.

    Args:
        labels (ndarray): (N,) contiguous class ids in [0, num_classes).
        num_classes (int): K (>= 2 when rate > 0).
        rate (float): fraction of boxes to relabel, in [0, 1].
        rng (np.random.Generator): random source.
        mode (str): "symmetric", "prior", "pairflip" or "matrix" (see :class:`NoiseSpec`).
        transition (K x K or None): flip distribution per clean class ("matrix" mode).

    Returns:
        ndarray: (N,) noisy labels; every changed label differs from the clean one.
    """
    labels = np.asarray(labels, dtype=np.int64)
    noisy = labels.copy()
    n_flip = int(round(rate * len(labels)))
    if n_flip == 0:
        return noisy
    if num_classes < 2:
        raise NoiseSpecError("label noise needs at least 2 categories")
    chosen = rng.choice(len(labels), size=n_flip, replace=False)
    clean = labels[chosen]
    if mode == "symmetric":
        # Uniform over the K - 1 other classes: draw an offset in [1, K).
        noisy[chosen] = (clean + rng.integers(1, num_classes, size=n_flip)) % num_classes
    elif mode == "pairflip":
        noisy[chosen] = (clean + 1) % num_classes
    else:
        if mode == "prior":
            mat = _prior_transition(labels, num_classes)
        else:
            mat = _check_transition(transition, num_classes)
        cum = np.cumsum(mat[clean], axis=1)
        draws = rng.uniform(size=(n_flip, 1))
        noisy[chosen] = np.minimum((draws > cum).sum(axis=1), num_classes - 1)
    return noisy


def make_noisy_dataset(data: Dict[str, Any], spec: NoiseSpec, source: str = "dataset"
                       ) -> Dict[str, Any]:
    """A noisy copy of a COCO/LVIS-format dataset (the input is not modified).

    Crowd annotations are copied unchanged. Each other annotation gets the noisy ``bbox`` and
    ``category_id``, an updated ``area``, and ``clean_id`` / ``clean_bbox`` / ``clean_category_id``.
    The top level gains ``noise`` with the parameters and the realised statistics.

    Args:
        data (dict): the clean dataset (``images``, ``annotations``, ``categories``).
        spec (NoiseSpec): the noise.
        source (str): name of the input for error messages.

    Returns:
        dict: the noisy dataset.

    Raises:
        NoiseSpecError: an empty dataset (no annotation) or bad parameters.
    """
    anns = data.get("annotations") or []
    if not anns:
        raise NoiseSpecError(f"{source}: the dataset has no annotations to make noisy")
    cat_ids = sorted(c["id"] for c in data["categories"])
    index = {cid: i for i, cid in enumerate(cat_ids)}
    images = {img["id"]: img for img in data["images"]}
    out = copy.deepcopy({k: v for k, v in data.items() if k != "annotations"})
    order = sorted(range(len(anns)), key=lambda i: anns[i].get("id", i))
    noisy_idx = [i for i in order if not anns[i].get("iscrowd", 0)]
    for i in noisy_idx:
        for key in ("bbox", "category_id", "image_id"):
            if key not in anns[i]:
                raise NoiseSpecError(f"{source}: annotations[id={anns[i].get('id')}] lacks '{key}'")
        if anns[i]["category_id"] not in index:
            raise NoiseSpecError(f"{source}: annotations[id={anns[i].get('id')}].category_id "
                                 f"{anns[i]['category_id']} is not a category")
    boxes = np.array([anns[i]["bbox"] for i in noisy_idx], dtype=np.float64).reshape(-1, 4)
    labels = np.array([index[anns[i]["category_id"]] for i in noisy_idx], dtype=np.int64)
    wh = np.array([[images[anns[i]["image_id"]]["width"], images[anns[i]["image_id"]]["height"]]
                   for i in noisy_idx], dtype=np.float64).reshape(-1, 2)
    # Separate generators for boxes and labels: the box noise of a (l, b) setting is the same
    # as that of (l', b) with the same seed, so settings differ only in what they name.
    box_rng, label_rng = (np.random.default_rng([spec.seed, s]) for s in (1, 2))
    noisy_boxes = (add_box_noise(boxes, spec.box_rate, box_rng, wh if spec.clip else None,
                                 spec.y_scale, spec.degenerate, spec.min_size)
                   if spec.box_rate > 0 else boxes.copy())
    noisy_labels = add_label_noise(labels, len(cat_ids), spec.label_rate, label_rng,
                                   spec.label_mode, spec.transition)
    result = []
    pos = {i: j for j, i in enumerate(noisy_idx)}
    for i in order:
        ann = copy.deepcopy(anns[i])
        if i in pos:
            j = pos[i]
            ann["clean_id"] = ann.get("id")
            ann["clean_bbox"] = [float(v) for v in ann["bbox"]]
            ann["clean_category_id"] = ann["category_id"]
            ann["bbox"] = [round(float(v), 2) for v in noisy_boxes[j]]
            ann["category_id"] = cat_ids[int(noisy_labels[j])]
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
            if not spec.keep_segmentation:
                ann.pop("segmentation", None)
        result.append(ann)
    out["annotations"] = result
    ious = box_iou_xywh(boxes, np.round(noisy_boxes, 2))
    out["noise"] = {**dataclasses.asdict(spec),
                    "num_annotations": len(noisy_idx),
                    "realised_label_rate": float((noisy_labels != labels).mean()) if len(labels)
                    else 0.0,
                    "mean_iou": float(ious.mean()) if len(ious) else 1.0}
    return out
