# Copyright (c) det_ext authors.
"""Detections as columns (no per-detection Python objects), with input checks and score limits."""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from .ground_truth import EvaluationInputError, read_json

__all__ = ["Detections", "load_detections", "top_k_per_group"]

_CHUNK = 1 << 16  # results converted at once


@dataclass
class Detections:
    """Detection results in columns, in the order they were given.

    Attributes:
        image_ids (np.ndarray): int64 [N].
        category_ids (np.ndarray): int64 [N].
        scores (np.ndarray): float64 [N].
        boxes (np.ndarray): float64 [N, 4] XYWH; NaN rows where a result has no ``bbox``.
        has_box (np.ndarray): bool [N], whether the result carried a ``bbox``.
        segmentations (list or None): per result its ``segmentation`` (RLE dict or polygons) or
            None; None for the whole list when no result has one.
        source (str): file name or a description, used in messages.
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    has_box: np.ndarray
    segmentations: Optional[List[Any]]
    source: str = "<detections>"

    def __len__(self) -> int:
        return len(self.scores)

    def describe(self, i: int) -> str:
        """A short description of result ``i`` for error messages."""
        return (f"{self.source}: result #{i} (image_id={int(self.image_ids[i])}, "
                f"category_id={int(self.category_ids[i])})")

    @classmethod
    def from_arrays(
        cls,
        image_ids: Sequence[int],
        category_ids: Sequence[int],
        scores: Sequence[float],
        boxes: Optional[np.ndarray] = None,
        segmentations: Optional[List[Any]] = None,
        source: str = "<detections>",
    ) -> "Detections":
        """Builds detections from columns and checks them.

        Args:
            image_ids, category_ids (sequence of int): [N] each.
            scores (sequence of float): [N].
            boxes (np.ndarray or None): [N, 4] XYWH (absolute pixels).
            segmentations (list or None): [N] compressed RLE dicts.
            source (str): description for messages.
        """
        n = len(scores)
        img = np.asarray(image_ids, dtype=np.int64).reshape(n)
        cat = np.asarray(category_ids, dtype=np.int64).reshape(n)
        sc = np.asarray(scores, dtype=np.float64).reshape(n)
        if boxes is None:
            bx, has = np.full((n, 4), np.nan), np.zeros(n, dtype=bool)
        else:
            bx, has = np.asarray(boxes, dtype=np.float64).reshape(n, 4), np.ones(n, dtype=bool)
        if segmentations is not None and len(segmentations) != n:
            raise EvaluationInputError(f"{source}: {len(segmentations)} segmentations for {n} "
                                       "detections")
        dets = cls(img, cat, sc, bx, has, segmentations, source)
        dets.check()
        return dets

    @classmethod
    def from_results(cls, results: Any, source: str = "<results list>",
                     iou_type: Optional[str] = None) -> "Detections":
        """Builds detections from LVIS/COCO result dicts.

        Args:
            results (list[dict]): ``{"image_id", "category_id", "score", "bbox": [x, y, w, h]}``
                and/or ``"segmentation"`` (RLE) each.
            source (str): description for messages.
            iou_type (str or None): with "bbox", segmentations are only read when some result
                lacks a box (saves time).

        Raises:
            EvaluationInputError: the input is not a list, or an entry lacks a field or has a bad
                value; the message names the entry.
        """
        if not isinstance(results, list):
            raise EvaluationInputError(f"{source}: results must be a list of objects, got "
                                       f"{type(results).__name__}")
        n = len(results)
        img, cat = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
        sc, boxes = np.empty(n, dtype=np.float64), np.full((n, 4), np.nan)
        has_box = np.ones(n, dtype=bool)
        want_segs = iou_type != "bbox"
        segs: List[Any] = []
        for s in range(0, n, _CHUNK):  # in chunks: small temporaries
            part = results[s:s + _CHUNK]
            img[s:s + len(part)] = _column(part, s, "image_id", np.int64, _INT_TYPES, source)
            cat[s:s + len(part)] = _column(part, s, "category_id", np.int64, _INT_TYPES, source)
            sc[s:s + len(part)] = _column(part, s, "score", np.float64, _NUM_TYPES, source)
            try:  # fast path: every result has a box
                raw = list(map(itemgetter("bbox"), part))
                idx = np.arange(s, s + len(part))
            except KeyError:
                has = np.fromiter(("bbox" in r for r in part), dtype=bool, count=len(part))
                has_box[s:s + len(part)] = has
                raw = [part[i]["bbox"] for i in np.flatnonzero(has).tolist()]
                idx = s + np.flatnonzero(has)
                want_segs = True
            if raw:
                try:
                    lens = np.fromiter(map(len, raw), dtype=np.int64, count=len(raw))
                    if (lens != 4).any():
                        raise ValueError
                    boxes[idx] = np.fromiter(itertools.chain.from_iterable(raw),
                                             dtype=np.float64, count=4 * len(raw)).reshape(-1, 4)
                except (TypeError, ValueError):
                    for j, b in zip(idx.tolist(), raw):
                        _check_box_entry(b, results, j, source)
                    raise EvaluationInputError(f"{source}: a bbox has a non-numeric value"
                                               ) from None
        if want_segs:
            try:
                segs = list(map(itemgetter("segmentation"), results))
            except KeyError:
                segs = [r.get("segmentation") for r in results]
        dets = cls(img, cat, sc, boxes, has_box,
                   segs if any(x is not None for x in segs) else None, source)
        dets.check()
        return dets

    def check(self) -> None:
        """Rejects NaN/infinite scores and boxes and negative box sizes, naming the entry."""
        bad = ~np.isfinite(self.scores)
        if bad.any():
            i = int(np.argmax(bad))
            raise EvaluationInputError(f"{self.describe(i)}: score is {self.scores[i]}")
        b = self.boxes
        bad_box = self.has_box & (~np.isfinite(b).all(axis=1) | (b[:, 2] < 0) | (b[:, 3] < 0))
        if bad_box.any():
            i = int(np.argmax(bad_box))
            raise EvaluationInputError(
                f"{self.describe(i)}: bbox {self.boxes[i].tolist()} has a NaN/infinite value "
                "or a negative width/height")


def _check_box_entry(box: Any, results: List[Any], i: int, source: str) -> None:
    ok = isinstance(box, (list, tuple)) and len(box) == 4
    if ok:
        try:
            [float(v) for v in box]
        except (TypeError, ValueError):
            ok = False
    if not ok:
        r = results[i]
        raise EvaluationInputError(f"{source}: result #{i} (image_id={r.get('image_id')}, "
                                   f"category_id={r.get('category_id')}): bbox must be "
                                   f"[x, y, w, h] numbers, got {box!r}")


_INT_TYPES = (int, np.integer)
_NUM_TYPES = (int, float, np.integer, np.floating)


def _type_ok(t: type, kinds: tuple) -> bool:
    return issubclass(t, kinds) and not issubclass(t, (bool, np.bool_))


def _column(results: List[Any], offset: int, key: str, dtype: Any, kinds: tuple,
            source: str) -> np.ndarray:
    """One field of every result as an array, or an error naming the first bad entry (results
    are entries ``offset, offset + 1, ...`` of the whole list)."""
    try:
        vals = list(map(itemgetter(key), results))
    except (KeyError, TypeError):
        vals = None
    if vals is None or not all(_type_ok(t, kinds) for t in set(map(type, vals))):
        what = "an integer" if kinds is _INT_TYPES else "a number"
        for i, r in enumerate(results):
            if not isinstance(r, dict):
                raise EvaluationInputError(f"{source}: result #{offset + i} is not an object: "
                                           f"{r!r:.80}")
            head = (f"{source}: result #{offset + i} (image_id={r.get('image_id')!r}, "
                    f"category_id={r.get('category_id')!r})")
            if key not in r:
                raise EvaluationInputError(f"{head} has no '{key}'")
            if not _type_ok(type(r[key]), kinds):
                raise EvaluationInputError(f"{head}: '{key}' must be {what}, got {r[key]!r}")
    return np.fromiter(vals, dtype=dtype, count=len(vals))


def load_detections(dt: Union[str, os.PathLike, List[Dict[str, Any]], Detections],
                    iou_type: Optional[str] = None) -> Detections:
    """Accepts a results JSON file, a list of result dicts or :class:`Detections`."""
    if isinstance(dt, Detections):
        return dt
    if isinstance(dt, (str, os.PathLike)):
        path = os.fspath(dt)
        return Detections.from_results(read_json(path, "detections"), source=path,
                                       iou_type=iou_type)
    return Detections.from_results(dt, iou_type=iou_type)


def top_k_per_group(group: np.ndarray, scores: np.ndarray, tie: np.ndarray, k: int) -> np.ndarray:
    """Keeps the ``k`` highest-scoring entries of every group; ties go to the smaller ``tie``.

    Args:
        group (np.ndarray): int64 [N] group of each entry.
        scores (np.ndarray): float64 [N].
        tie (np.ndarray): int64 [N] tie-break order.
        k (int): how many to keep per group.

    Returns:
        np.ndarray: bool [N] keep mask.
    """
    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort((tie, -scores, group))
    g = group[order]
    start = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    rank = np.arange(n) - np.repeat(start, np.diff(np.r_[start, n]))
    keep = np.zeros(n, dtype=bool)
    keep[order[rank < k]] = True
    return keep
