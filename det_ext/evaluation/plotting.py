# Copyright (c) det_ext authors.
"""Plot of per-category AP against training frequency."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

__all__ = ["plot_ap_vs_frequency"]

_GROUP_STYLE = {"r": ("rare", "tab:red"), "c": ("common", "tab:orange"),
                "f": ("frequent", "tab:blue"), None: ("no frequency", "tab:gray")}


def plot_ap_vs_frequency(per_category: List[Dict[str, Any]], path: str,
                         count_key: str = "instance_count",
                         bins: Optional[List[Dict[str, Any]]] = None,
                         title: Optional[str] = None) -> str:
    """Scatter plot of per-category AP (percent) against the training count (log scale),
    coloured by frequency group, with the bins' AP drawn as horizontal segments.

    Categories without ground truth (AP -1) or with a count <= 0 are left out (counted in the
    title).

    Args:
        per_category (list[dict]): ``per_category`` of :func:`evaluate_lvis`.
        path (str): output image (PNG, PDF, SVG, ...).
        count_key (str): the count field of the records.
        bins (list[dict] or None): ``bins`` of :func:`evaluate_lvis`.
        title (str or None): plot title.

    Returns:
        str: ``path``.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    fig = Figure(figsize=(8, 4.5), dpi=120)
    ax = fig.subplots()
    shown = skipped = 0
    for group, (label, color) in _GROUP_STYLE.items():
        pts = [(float(c[count_key]), 100 * c["AP"]) for c in per_category
               if c.get("frequency") == group and c["AP"] >= 0
               and isinstance(c.get(count_key), (int, float)) and c[count_key] > 0]
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, s=10, alpha=0.7, color=color, label=f"{label} ({len(pts)})")
            shown += len(pts)
    skipped = sum(1 for c in per_category if c["AP"] >= 0) - shown
    for b in bins or []:
        lo, hi = b["range"]
        if b["AP"] >= 0 and b["num_categories"]:
            left = max(lo, 0.8)
            top = max([float(c.get(count_key) or 0) for c in per_category] + [left])
            right = hi if hi != float("inf") else max(1.5 * top, 2 * left)
            ax.hlines(100 * b["AP"], left, right, colors="black", linewidth=1.5)
            ax.text(left, 100 * b["AP"] + 1, f"{b['name']} {100 * b['AP']:.1f}", fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(f"training {count_key.replace('_', ' ')} (log scale)")
    ax.set_ylabel("AP (%)")
    ax.set_ylim(-2, 102)
    ax.grid(True, which="both", alpha=0.3)
    note = f" ({skipped} categories with count <= 0 not shown)" if skipped else ""
    ax.set_title((title or "Per-category AP vs. training frequency") + note, fontsize=9)
    if shown:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path)
    return path
