# Copyright (c) det_ext authors.
"""Frequency-bin AP, per-category AP, readable tables and JSON output of evaluation results."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from tabulate import tabulate

from .ground_truth import EvaluationInputError

__all__ = ["COCO_LT_BINS", "LVIS_BINS", "BIN_PRESETS", "parse_bins", "bin_results",
           "per_category_results", "summary_table", "bins_table", "per_category_table",
           "to_percent", "write_json"]

INF = float("inf")
# SimCal's COCO-LT bins of training instance counts: [1, 20), [20, 400), [400, 8000), [8000, inf).
COCO_LT_BINS: Tuple[Tuple[float, float], ...] = ((1, 20), (20, 400), (400, 8000), (8000, INF))
# LVIS-style bins: [0, 10), [10, 100), [100, 1000), [1000, inf).
LVIS_BINS: Tuple[Tuple[float, float], ...] = ((0, 10), (10, 100), (100, 1000), (1000, INF))
BIN_PRESETS = {"coco_lt": COCO_LT_BINS, "lvis": LVIS_BINS}

BinsSpec = Union[None, str, Sequence[float], Sequence[Sequence[float]]]


def parse_bins(bins: BinsSpec) -> Tuple[Tuple[float, float], ...]:
    """Normalises a bin specification to half-open ``(lo, hi)`` ranges.

    Args:
        bins: None (:data:`LVIS_BINS`), a preset name (``"coco_lt"``, ``"lvis"``), increasing
            edges ``[e0, e1, ..., en]`` meaning ``[e0, e1), ..., [en, inf)``, or ``(lo, hi)`` pairs.

    Raises:
        EvaluationInputError: an unknown preset or edges that are not increasing.
    """
    if bins is None:
        return LVIS_BINS
    if isinstance(bins, str):
        if bins.lower() not in BIN_PRESETS:
            raise EvaluationInputError(f"unknown bins preset {bins!r}; use one of "
                                       f"{sorted(BIN_PRESETS)} or a list of edges")
        return BIN_PRESETS[bins.lower()]
    items = list(bins)
    if items and all(isinstance(b, (list, tuple)) for b in items):
        out = tuple((float(lo), float(hi)) for lo, hi in items)
    else:
        edges = [float(e) for e in items]
        out = tuple(zip(edges, edges[1:] + [INF]))
    if not out or any(not lo < hi for lo, hi in out):
        raise EvaluationInputError(f"bins must be increasing edges or (lo, hi) pairs, got {bins!r}")
    return out


def _mean_ap(precision: np.ndarray, cat_idx: np.ndarray) -> float:
    s = precision[:, :, cat_idx, 0]
    s = s[s > -1]
    return float(np.mean(s)) if len(s) else -1.0


def bin_results(precision: np.ndarray, categories: List[Dict[str, Any]], bins: BinsSpec,
                count_key: str = "instance_count",
                counts: Optional[Sequence[float]] = None) -> List[Dict[str, Any]]:
    """AP of the categories in each training-count bin (like APr/APc/APf, over area "all").

    Args:
        precision (np.ndarray): [T, R, K, A] precision (-1 where undefined).
        categories (list[dict]): K category records sorted by id.
        bins: see :func:`parse_bins`.
        count_key (str): category field holding the training count (``instance_count`` or
            ``image_count``); ignored when ``counts`` is given.
        counts (sequence or None): K training counts overriding the field.

    Returns:
        list[dict]: per bin ``name`` (``AP1``...), ``range`` [lo, hi], ``AP`` (-1 when no
        category of the bin has ground truth, as the LVIS API does for empty groups) and
        ``num_categories``.
    """
    ranges = parse_bins(bins)
    if counts is None:
        counts = [c.get(count_key, math.nan) for c in categories]
    cnt = np.asarray(counts, dtype=np.float64)
    out = []
    for i, (lo, hi) in enumerate(ranges):
        idx = np.flatnonzero((cnt >= lo) & (cnt < hi))
        out.append({"name": f"AP{i + 1}", "range": [lo, hi], "AP": _mean_ap(precision, idx),
                    "num_categories": int(len(idx))})
    return out


def per_category_results(categories: List[Dict[str, Any]], ap: np.ndarray, num_gt: np.ndarray,
                         num_dt: np.ndarray, count_key: str = "instance_count"
                         ) -> List[Dict[str, Any]]:
    """One record per category: id, name, frequency, training count, AP (-1: no GT), #GT, #dets."""
    return [{"id": int(c["id"]), "name": c.get("name", str(c["id"])),
             "frequency": c.get("frequency"), count_key: c.get(count_key),
             "AP": float(a), "num_gt": int(g), "num_dt": int(d)}
            for c, a, g, d in zip(categories, ap, num_gt, num_dt)]


def to_percent(value: float) -> float:
    """Fraction to percent; -1 (undefined) becomes NaN, as Detectron2's COCOEvaluator does."""
    return float(value * 100) if value >= 0 else float("nan")


def _fmt(v: float) -> str:
    return "-" if v < 0 or v != v else f"{100 * v:.3f}"


def summary_table(results: Dict[str, Any]) -> str:
    """The scalar metrics (in percent) as one table row."""
    keys = [k for k, v in results.items() if isinstance(v, float)]
    return tabulate([[_fmt(results[k]) for k in keys]], headers=keys, tablefmt="pipe",
                    stralign="center", disable_numparse=True)


def bins_table(bins: List[Dict[str, Any]], count_key: str = "instance_count") -> str:
    """AP per training-count bin (percent)."""
    rows = [[b["name"], f"[{b['range'][0]:g}, {b['range'][1]:g})", b["num_categories"],
             _fmt(b["AP"])] for b in bins]
    return tabulate(rows, headers=["bin", f"training {count_key}", "#categories", "AP"],
                    tablefmt="pipe", disable_numparse=True)


def per_category_table(per_cat: List[Dict[str, Any]], columns: int = 3) -> str:
    """Per-category AP (percent) in ``columns`` column pairs, as Detectron2's COCOEvaluator."""
    flat = []
    for c in per_cat:
        flat += [f"{c['name']} ({c['frequency'] or '-'})", _fmt(c["AP"])]
    n = 2 * columns
    rows = [flat[i:i + n] for i in range(0, len(flat), n)]
    return tabulate(rows, headers=["category", "AP"] * columns, tablefmt="pipe",
                    disable_numparse=True)


def write_json(path: str, obj: Any) -> None:
    """Writes JSON atomically; infinities become the string ``"inf"``."""
    from det_ext.utils.io import atomic_write_json

    def clean(x: Any) -> Any:
        if isinstance(x, float) and math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if isinstance(x, float) and x != x:
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, np.generic):
            return clean(x.item())
        return x

    atomic_write_json(path, clean(obj), indent=1)
