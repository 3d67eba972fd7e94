# Copyright (c) det_ext authors.
"""Greedy detection-to-ground-truth matching, vectorised over images, categories, area ranges and
IoU thresholds, with the exact tie rules of the LVIS API / pycocotools.

The reference matches every detection of an (image, category) group in score order, at every IoU
threshold and area range, to the unmatched ground truth of highest IoU (at least the threshold);
regular ground truth is preferred to ignored ground truth, and among equal IoUs the one listed
last wins. That is the lexicographic maximum of ``(not ignored, IoU, position)`` over the
available candidates, which this module evaluates for all groups at once: step ``s`` handles the
``s``-th detection of every group, so the number of Python iterations is the largest number of
overlapping detections in one group, not the number of groups. Only pairs with IoU >= the lowest
threshold are kept (sparse), so memory grows with overlapping pairs, not images x categories.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Tuple

import numpy as np

__all__ = ["MatchProblem", "MatchResult", "match_detections", "runs"]

# Detection status per (area range, IoU threshold): unmatched (counts as a false positive unless
# ignored for its area / not-exhaustive category), true positive, or matched to ignored ground
# truth.
UNMATCHED, TRUE_POSITIVE, IGNORED = 0, 1, 2

_PAIR_CHUNK = 1 << 16  # candidate (detection, ground truth) pairs evaluated at once

PairIoU = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class MatchProblem:
    """Inputs of the matching, all in original order.

    Attributes:
        num_cats (int): K, number of categories (group key is ``image * K + category``).
        gt_img, gt_cat (np.ndarray): int64 [G].
        gt_area (np.ndarray): float64 [G].
        gt_ignore (np.ndarray): bool [G], ignored regardless of area (LVIS ``ignore``, COCO crowd).
        gt_crowd (np.ndarray): bool [G], crowd regions (may be matched repeatedly; COCO only).
        gt_id_nonzero (np.ndarray): bool [G].
        dt_img, dt_cat (np.ndarray): int64 [N].
        dt_score (np.ndarray): float64 [N].
        pair_iou (callable): ``(dt_idx [P], gt_idx [P], n_dt [B], n_gt [B]) -> iou [P]`` for the
            pairs of B groups, enumerated detection-major within each group (detections in score
            order); indices are original indices.
    """

    num_cats: int
    gt_img: np.ndarray
    gt_cat: np.ndarray
    gt_area: np.ndarray
    gt_ignore: np.ndarray
    gt_crowd: np.ndarray
    gt_id_nonzero: np.ndarray
    dt_img: np.ndarray
    dt_cat: np.ndarray
    dt_score: np.ndarray
    pair_iou: PairIoU


@dataclass
class MatchResult:
    """Matching outcome.

    Attributes:
        cand_dt (np.ndarray): int64 [C], original indices of the detections that overlap some
            ground truth of their group with IoU >= the lowest threshold (all others are
            unmatched everywhere).
        status (np.ndarray): int8 [A, T, C], UNMATCHED / TRUE_POSITIVE / IGNORED per area range
            and IoU threshold.
        dt_rank (np.ndarray): int64 [N], rank of each detection inside its (image, category)
            group by decreasing score (ties: input order).
    """

    cand_dt: np.ndarray
    status: np.ndarray
    dt_rank: np.ndarray


def runs(sorted_keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique values, start offsets and lengths of the runs of a sorted array."""
    n = len(sorted_keys)
    if n == 0:
        e = np.zeros(0, dtype=np.int64)
        return sorted_keys[:0], e, e
    start = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    return sorted_keys[start], start, np.diff(np.r_[start, n])


def gt_ignored_by_area(gt_ignore: np.ndarray, gt_area: np.ndarray,
                       area_ranges: Sequence[Sequence[float]]) -> np.ndarray:
    """bool [A, G]: ignored flag of every ground truth for every area range (bounds inclusive)."""
    return np.stack([gt_ignore | (gt_area < lo) | (gt_area > hi) for lo, hi in area_ranges]) \
        if len(area_ranges) else np.zeros((0, len(gt_area)), dtype=bool)


def _candidate_pairs(p: MatchProblem, min_iou: float):
    """Sorted detection/ground-truth orders, detection ranks, and the pairs with IoU >= min_iou."""
    n, k = len(p.dt_score), np.int64(p.num_cats)
    dkey = p.dt_img * k + p.dt_cat
    d_order = np.lexsort((-p.dt_score, dkey))  # stable: ties keep input order
    dks = dkey[d_order]
    gkey = p.gt_img * k + p.gt_cat
    g_order = np.argsort(gkey, kind="stable")
    du, ds, dn = runs(dks)
    gu, gs, gn = runs(gkey[g_order])
    dt_rank = np.empty(n, dtype=np.int64)
    dt_rank[d_order] = np.arange(n) - np.repeat(ds, dn)

    _, di, gi = np.intersect1d(du, gu, assume_unique=True, return_indices=True)
    ds, dn, gs, gn = ds[di], dn[di], gs[gi], gn[gi]
    sizes = dn * gn
    out_d, out_g, out_iou = [], [], []
    b = 0
    while b < len(sizes):
        cum = np.cumsum(sizes[b:])
        e = b + max(1, int(np.searchsorted(cum, _PAIR_CHUNK, side="right")))
        sz, nd, ng = sizes[b:e], dn[b:e], gn[b:e]
        tot = int(sz.sum())
        grp = np.repeat(np.arange(e - b), sz)
        off = np.arange(tot) - np.repeat(np.cumsum(sz) - sz, sz)
        ngr = ng[grp]
        dl = off // ngr
        pd = ds[b:e][grp] + dl
        pg = gs[b:e][grp] + (off - dl * ngr)
        ious = p.pair_iou(d_order[pd], g_order[pg], nd, ng)
        keep = ious >= min_iou
        out_d.append(pd[keep])
        out_g.append(pg[keep])
        out_iou.append(ious[keep])
        b = e
    cat = (lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dtype=dt))
    return (d_order, g_order, dks, dt_rank, cat(out_d, np.int64), cat(out_g, np.int64),
            cat(out_iou, np.float64))


def match_detections(p: MatchProblem, area_ranges: Sequence[Sequence[float]],
                     iou_thrs: np.ndarray) -> MatchResult:
    """Matches detections to ground truth for every area range and IoU threshold.

    Args:
        p (MatchProblem): the detections and ground truth.
        area_ranges (sequence of (lo, hi)): A area ranges.
        iou_thrs (np.ndarray): float64 [T] IoU thresholds.

    Returns:
        MatchResult: per candidate detection its status [A, T, C].
    """
    thr = np.array([min(float(t), 1 - 1e-10) for t in iou_thrs], dtype=np.float64)
    n_area, n_thr = len(area_ranges), len(thr)
    d_order, g_order, dks, dt_rank, pd, pg, iou = _candidate_pairs(
        p, float(thr.min()) if n_thr else np.inf)
    num_g = len(g_order)
    cand, inv = np.unique(pd, return_inverse=True)
    n_cand = len(cand)
    status = np.zeros((n_area, n_thr, n_cand), dtype=np.int8)
    if n_cand == 0:
        return MatchResult(d_order[cand], status, dt_rank)

    # Step of a candidate detection = its rank among the candidates of its group.
    ck = dks[cand]
    first = np.maximum.accumulate(np.where(np.r_[True, ck[1:] != ck[:-1]],
                                           np.arange(n_cand), 0))
    step = (np.arange(n_cand) - first)[inv]
    order = np.lexsort((pg, inv, step))
    pg, inv, iou, step = pg[order], inv[order], iou[order], step[order]

    # Lexicographic key (not ignored, IoU, position): exact integer encoding via IoU ranks.
    uniq, iou_rank = np.unique(iou, return_inverse=True)
    scale = np.int64(len(uniq)) * np.int64(max(num_g, 1))
    nonig = ~gt_ignored_by_area(p.gt_ignore[g_order], p.gt_area[g_order], area_ranges)
    keys = nonig[:, pg].astype(np.int64) * scale + (iou_rank.astype(np.int64) * num_g + pg)
    crowd = p.gt_crowd[g_order]
    id_nz = p.gt_id_nonzero[g_order]
    taken = np.zeros((n_area, n_thr, num_g), dtype=bool)
    _, s_start, s_len = runs(step)
    for s0, sl in zip(s_start.tolist(), s_len.tolist()):
        sel = slice(s0, s0 + sl)
        pgs, dts = pg[sel], inv[sel]
        d_start = np.flatnonzero(np.r_[True, dts[1:] != dts[:-1]])
        valid = (iou[sel][None, :] >= thr[:, None])[None] & (~taken[:, :, pgs] | crowd[pgs])
        best = np.maximum.reduceat(np.where(valid, keys[:, None, sel], -1), d_start, axis=2)
        a_i, t_i, j = np.nonzero(best >= 0)
        if len(j) == 0:
            continue
        b = best[a_i, t_i, j]
        g = b % num_g
        taken[a_i, t_i, g] = True
        code = np.where(b < scale, IGNORED, np.where(id_nz[g], TRUE_POSITIVE, UNMATCHED))
        status[a_i, t_i, dts[d_start[j]]] = code
    return MatchResult(d_order[cand], status, dt_rank)
