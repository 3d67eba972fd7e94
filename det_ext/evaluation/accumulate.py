# Copyright (c) det_ext authors.
"""Precision/recall accumulation with the exact arithmetic of the LVIS API and pycocotools.

The reference sorts a category's detections by score, takes cumulative true/false positive counts
``tp``, ``fp``, computes ``pr = tp / (fp + tp + eps)`` and ``rc = tp / num_gt``, replaces each
precision by the maximum to its right, and reads it at the first index where ``rc`` reaches each
recall threshold. Those readings always fall on true positives (or on the first detection for
recall 0), so only true positives need a precision value here: for each one its rank ``tp`` and the
number of non-ignored false positives before it. The result arrays have the reference's shapes;
nothing is of size images x categories.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from .matching import TRUE_POSITIVE, UNMATCHED, MatchResult

__all__ = ["accumulate", "recall_rank_thresholds"]

_EPS = np.spacing(1)


def recall_rank_thresholds(num_gt: np.ndarray, rec_thrs: np.ndarray) -> np.ndarray:
    """Smallest true-positive count k with ``float(k) / num_gt >= thr``, per category and thr.

    Args:
        num_gt (np.ndarray): int64 [K] (entries <= 0 give 0).
        rec_thrs (np.ndarray): float64 [R].

    Returns:
        np.ndarray: int64 [K, R].
    """
    n = np.maximum(num_gt, 1).astype(np.float64)[:, None]
    r = rec_thrs[None, :]
    k = np.ceil(r * n).astype(np.int64)
    for _ in range(4):
        k = k - ((k > 0) & ((k - 1) / n >= r))
    for _ in range(4):
        k = k + (k / n < r)
    return k


def _suffix_max(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Exact per-group maximum of ``values[i:]`` (to the group's end), groups contiguous."""
    if len(values) == 0:
        return values
    uniq, rank = np.unique(values, return_inverse=True)
    span = np.int64(len(uniq) + 1)
    off = (np.int64(n_groups - 1) - group.astype(np.int64)) * span
    acc = np.maximum.accumulate((off + rank)[::-1])[::-1]
    return uniq[acc - off]


def accumulate(
    dt_cat: np.ndarray,
    dt_img: np.ndarray,
    dt_score: np.ndarray,
    dt_base_ignore: np.ndarray,
    match: MatchResult,
    num_gt: np.ndarray,
    rec_thrs: np.ndarray,
    max_dets: Optional[Sequence[int]] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Precision at the recall thresholds and final recall, per category and area range.

    Args:
        dt_cat, dt_img (np.ndarray): int64 [N] category / image index of each detection.
        dt_score (np.ndarray): float64 [N].
        dt_base_ignore (np.ndarray): bool [A, N], whether an *unmatched* detection is ignored
            (outside the area range, or a not-exhaustive category).
        match (MatchResult): matching outcome (status [A, T, C]).
        num_gt (np.ndarray): int64 [K, A], non-ignored ground truth per category and area range.
        rec_thrs (np.ndarray): float64 [R].
        max_dets (sequence of int or None): COCO-style limits M on detections per
            (image, category), or None for no limit (LVIS).

    Returns:
        tuple: ``precision`` float64 [T, R, K, A] and ``recall`` [T, K, A] (with a trailing M axis
        when ``max_dets`` is given); -1 where a category has no non-ignored ground truth.
    """
    n_area, n_thr, _ = match.status.shape
    num_k, n_rec, n = num_gt.shape[0], len(rec_thrs), len(dt_score)
    limits = [None] if max_dets is None else list(max_dets)
    prec = np.full((n_thr, n_rec, num_k, n_area, len(limits)), -1.0)
    rec = np.full((n_thr, num_k, n_area, len(limits)), -1.0)

    order = np.lexsort((dt_img, -dt_score, dt_cat))  # stable: ties keep input order
    pos_of = np.empty(n, dtype=np.int64)
    pos_of[order] = np.arange(n)
    cats = dt_cat[order]
    seg_start = np.searchsorted(cats, np.arange(num_k), side="left")
    c_ord = np.argsort(pos_of[match.cand_dt], kind="stable")
    cpos = pos_of[match.cand_dt][c_ord]
    ccat = cats[cpos]
    n_before = np.searchsorted(cpos, seg_start, side="left")  # candidates before each segment
    rank_sorted = match.dt_rank[order]

    idx_cache: dict = {}
    for a in range(n_area):
        kr = recall_rank_thresholds(num_gt[:, a], rec_thrs)  # [K, R]
        idx = np.maximum(kr, 1) - 1  # TP rank read at each recall threshold
        has_gt = num_gt[:, a] > 0
        ignored = dt_base_ignore[a][order]
        for m, limit in enumerate(limits):
            base_fp = ~ignored
            c_inside = None
            if limit is not None:
                inside = idx_cache.setdefault(limit, rank_sorted < limit)
                base_fp &= inside
                c_inside = inside[cpos]
            # Exclusive prefix counts: base_cum[p] = non-ignored FPs before position p.
            base_cum = np.zeros(n + 1, dtype=np.int32)
            np.cumsum(base_fp, out=base_cum[1:])
            c_base = base_fp[cpos]
            for t in range(n_thr):
                status = match.status[a, t][c_ord]  # [C]
                # Candidates that are no FP although not ignored: matched (TP or to ignored GT).
                dcum = np.zeros(len(cpos) + 1, dtype=np.int32)
                np.cumsum(c_base & (status != UNMATCHED), out=dcum[1:])
                is_tp = status == TRUE_POSITIVE
                j = np.flatnonzero(is_tp if c_inside is None else is_tp & c_inside)
                k_i = ccat[j]
                # FPs before each true positive within its category (the TP itself is no FP).
                fp_b = ((base_cum[cpos[j]] - dcum[j])
                        - (base_cum[seg_start[k_i]] - dcum[n_before[k_i]]))
                n_tp = np.bincount(k_i, minlength=num_k)
                first = np.cumsum(n_tp) - n_tp
                tpf = (np.arange(len(j)) - first[k_i] + 1).astype(np.float64)
                pr = tpf / (fp_b.astype(np.float64) + tpf + _EPS)
                suf = _suffix_max(pr, k_i, num_k)
                ok = idx < n_tp[:, None]
                vals = np.zeros(idx.shape)
                if len(suf):
                    vals[ok] = suf[(first[:, None] + idx)[ok]]
                vals[~has_gt] = -1
                prec[t, :, :, a, m] = vals.T
                rec[t, :, a, m] = np.where(has_gt, n_tp / np.maximum(num_gt[:, a], 1), -1)
    if max_dets is None:
        return prec[..., 0], rec[..., 0]
    return prec, rec
