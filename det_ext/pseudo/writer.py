# Copyright (c) det_ext authors.
"""Merging shard files into one COCO/LVIS-format pseudo-label JSON.

Output: ``images`` (id, file_name relative to ``info.image_root``, height, width), ``annotations``
(id, image_id, category_id, bbox XYWH float, area, iscrowd 0, pseudo_score; no segmentation),
``categories`` (the vocabulary's ids and names, plus the dataset's synonyms/frequency when known and
optional ``embedding``), and ``info`` (image_root, settings, the report of skips). Ordering is by
image id then category id, and annotation ids are assigned in that order, so the file depends only
on the results, not on how the run was split, interrupted or resumed.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence

from det_ext.utils.errors import DetExtInputError
from det_ext.utils.io import atomic_write_json

from .generator import read_shard_file

__all__ = ["shard_path", "merge_shards", "build_pseudo_json"]

logger = logging.getLogger(__name__)


def shard_path(out: str, i: int, n: int) -> str:
    """The append-only shard file of shard ``i`` of ``n`` for output ``out``."""
    return os.path.join(f"{out}.shards", f"shard-{i:04d}-of-{n:04d}.jsonl")


def build_pseudo_json(
    results: Sequence[Dict[str, Any]],
    categories: List[Dict[str, Any]],
    image_root: str,
    settings: Dict[str, Any],
    num_captions: int = 0,
) -> Dict[str, Any]:
    """The pseudo-label dataset from per-image results (any order)."""
    results = sorted(results, key=lambda r: r["image_id"])
    images, anns, skipped = [], [], Counter()
    for r in results:
        skipped.update(r.get("skipped", {}))
        if not r.get("ok", True):
            continue
        images.append(
            {
                "id": r["image_id"],
                "file_name": r["file_name"],
                "height": r["height"],
                "width": r["width"],
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
            }
        )
        for b in sorted(r["boxes"], key=lambda b: (b["category_id"], b["bbox"])):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": r["image_id"],
                    "category_id": b["category_id"],
                    "bbox": b["bbox"],
                    "area": round(b["bbox"][2] * b["bbox"][3], 2),
                    "iscrowd": 0,
                    "pseudo_score": b["pseudo_score"],
                }
            )
    per_cat = Counter(a["category_id"] for a in anns)
    cats = []
    for c in sorted(categories, key=lambda c: c["id"]):
        c = dict(c)
        c["pseudo_box_count"] = per_cat.get(c["id"], 0)
        cats.append(c)
    report = {
        "images": len(results),
        "images_written": len(images),
        "boxes": len(anns),
        "images_with_boxes": len({a["image_id"] for a in anns}),
        "skipped": dict(sorted(skipped.items())),
    }
    return {
        "info": {
            "description": "det_ext pseudo boxes (vision-language Grad-CAM)",
            "image_root": image_root,
            "settings": settings,
            "report": report,
        },
        "images": images,
        "annotations": anns,
        "categories": cats,
    }


def merge_shards(
    out: str,
    num_shards: int,
    categories: List[Dict[str, Any]],
    image_root: str,
    settings: Dict[str, Any],
    expected: Optional[Dict[int, int]] = None,
) -> Dict[str, Any]:
    """Merges every shard of ``out`` into ``out`` (atomically).

    Args:
        expected: shard index -> number of records; a shard with fewer finished records is an error
            (rerun it first).

    Returns:
        dict: the report (counts of images, boxes and skips by reason).
    """
    results: List[Dict[str, Any]] = []
    for i in range(num_shards):
        path = shard_path(out, i, num_shards)
        header, batches = read_shard_file(path)
        if header is None:
            raise DetExtInputError(f"{path}: shard {i}/{num_shards} has not been run")
        got = sum(len(v) for v in batches.values())
        need = expected.get(i, header["num_records"]) if expected else header["num_records"]
        if got != need:
            raise DetExtInputError(
                f"{path}: shard {i}/{num_shards} is unfinished ({got} of {need} "
                "images); rerun it before merging"
            )
        for b in sorted(batches):
            results.extend(batches[b])
    ids = [r["image_id"] for r in results]
    if len(ids) != len(set(ids)):
        raise DetExtInputError(
            f"{out}.shards: an image appears in two shards (shards of different " "runs mixed?)"
        )
    data = build_pseudo_json(results, categories, image_root, settings)
    atomic_write_json(out, data)
    logger.info("Wrote %s: %s", out, data["info"]["report"])
    return data["info"]["report"]
