# Copyright (c) det_ext authors.
"""The pseudo-box generator: captions -> mentions -> word maps (one batched backward) -> boxes.

Images are processed in fixed batches of one shard; each finished batch is appended as one JSON line
to the shard file, so a killed run resumes at the first unfinished batch with identical batch
boundaries (hence bit-identical results), never duplicating or losing an image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter, defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from det_ext.utils.errors import DetExtInputError

from .backends.base import VLBackend
from .inputs import ImageRecord, load_rgb
from .matching import CaptionMatcher
from .proposals import ProposalSource
from .selection import merge_maps, normalize_map, select_boxes
from .text import clean_caption

__all__ = ["PseudoBoxGenerator", "shard_records", "run_shard", "read_shard_file", "SKIP_REASONS"]

logger = logging.getLogger(__name__)

SKIP_REASONS = (
    "missing_image",
    "empty_caption",
    "no_vocabulary_word",
    "truncated_mention",
    "flat_map",
    "no_proposals",
    "no_fitting_proposal",
    "low_score",
)


class PseudoBoxGenerator:
    """Turns a batch of images with captions into pseudo boxes.

    Args:
        backend (VLBackend): word-level activation maps.
        matcher (CaptionMatcher): caption-to-category matching (with the backend's tokenizer).
        proposals (ProposalSource): proposals per image.
        image_root (str): folder the records' ``file_name`` are relative to.
        alpha (float): area exponent of the box score.
        map_threshold (float): cut of the normalised map.
        max_count (int): cap on boxes per mention ("three circles").
        min_score (float): minimum pseudo_score of a box.
        score_weight (float): exponent of the proposal score in the box score (0: ignored).
    """

    def __init__(
        self,
        backend: VLBackend,
        matcher: CaptionMatcher,
        proposals: ProposalSource,
        image_root: str,
        alpha: float = 0.5,
        map_threshold: float = 0.5,
        max_count: int = 1,
        min_score: float = 0.0,
        score_weight: float = 0.0,
    ):
        self.backend, self.matcher, self.proposals = backend, matcher, proposals
        self.image_root = image_root
        self.alpha, self.map_threshold = alpha, map_threshold
        self.max_count, self.min_score = max(1, max_count), min_score
        self.score_weight = score_weight

    def _collect(self, records: Sequence[ImageRecord]):
        """Reads images, matches captions and computes every mention's map (one backend call)."""
        results, images, pairs = [], {}, []
        for rec in records:
            res = {
                "image_id": rec.image_id,
                "file_name": rec.file_name,
                "boxes": [],
                "skipped": Counter(),
                "ok": True,
            }
            results.append(res)
            img = load_rgb(os.path.join(self.image_root, rec.file_name))
            if img is None:
                res["ok"] = False
                res["skipped"]["missing_image"] += 1
                continue
            images[rec.image_id] = img
            res["height"], res["width"] = int(img.shape[0]), int(img.shape[1])
            for caption in rec.captions:
                text = clean_caption(caption)
                if not text:
                    res["skipped"]["empty_caption"] += 1
                    continue
                tokens = self.backend.tokenize(text)
                matches = self.matcher.match(tokens, max_tokens=self.backend.max_text_len - 2)
                if not matches:
                    all_matches = self.matcher.match(tokens)
                    res["skipped"][
                        "truncated_mention" if all_matches else "no_vocabulary_word"
                    ] += 1
                    continue
                pairs.append((rec.image_id, text, matches))
        maps_by_key: Dict[Tuple[int, int], List[np.ndarray]] = defaultdict(list)
        counts: Dict[Tuple[int, int], int] = defaultdict(lambda: 1)
        if pairs:
            maps = self.backend.span_maps(
                [images[p[0]] for p in pairs],
                [p[1] for p in pairs],
                [[(m.left, m.right) for m in p[2]] for p in pairs],
            )
            for (image_id, _, matches), pair_maps in zip(pairs, maps):
                for m, cam in zip(matches, pair_maps):
                    key = (image_id, m.category_id)
                    maps_by_key[key].append(cam.numpy())
                    counts[key] = max(counts[key], min(m.count, self.max_count))
        return results, images, maps_by_key, counts

    def activations(
        self, records: Sequence[ImageRecord]
    ) -> Dict[Tuple[int, int], Optional[np.ndarray]]:
        """The normalised, thresholded activation [H, W] of every (image id, category id) mentioned
        (None for a flat map), as used for box selection."""
        results, _, maps_by_key, _ = self._collect(records)
        size = {r["image_id"]: (r["height"], r["width"]) for r in results if r["ok"]}
        out = {}
        for (image_id, cat_id), maps in sorted(maps_by_key.items()):
            merged = merge_maps(maps)
            out[(image_id, cat_id)] = (
                None
                if merged is None
                else normalize_map(merged, *size[image_id], self.map_threshold)
            )
        return out

    def process(self, records: Sequence[ImageRecord]) -> List[Dict[str, Any]]:
        """Results of one batch, one dict per record: ``image_id``, ``file_name``, ``height``,
        ``width``, ``boxes`` ([{category_id, bbox XYWH, pseudo_score}]), ``skipped`` (reason ->
        count) and ``ok`` (False when the image could not be read)."""
        results, images, maps_by_key, counts = self._collect(records)
        ids = [r["image_id"] for r in results if r["ok"]]
        props = dict(zip(ids, self.proposals(ids, [images[i] for i in ids]))) if ids else {}
        by_id = {r["image_id"]: r for r in results}
        for image_id, cat_id in sorted(maps_by_key):
            res = by_id[image_id]
            merged = merge_maps(maps_by_key[(image_id, cat_id)])
            act = (
                None
                if merged is None
                else normalize_map(merged, res["height"], res["width"], self.map_threshold)
            )
            if act is None:
                res["skipped"]["flat_map"] += 1
                continue
            if len(props[image_id]) == 0:
                res["skipped"]["no_proposals"] += 1
                continue
            chosen = select_boxes(
                act,
                props[image_id],
                self.alpha,
                counts[(image_id, cat_id)],
                score_weight=self.score_weight,
            )
            if not chosen:
                res["skipped"]["no_fitting_proposal"] += 1
            for box, score in chosen:
                if score < self.min_score:
                    res["skipped"]["low_score"] += 1
                    continue
                x0, y0, x1, y1 = (round(float(v), 2) for v in box)
                res["boxes"].append(
                    {
                        "category_id": int(cat_id),
                        "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                        "pseudo_score": round(score, 4),
                    }
                )
        for r in results:
            r["skipped"] = dict(r["skipped"])
        return results


def shard_records(records: Sequence[ImageRecord], shard: Tuple[int, int]) -> List[ImageRecord]:
    """Records of shard ``i`` of ``n``: every n-th image by id order, starting at i."""
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise DetExtInputError(f"--shard: expected i/n with 0 <= i < n, got {i}/{n}")
    return list(records[i::n])


def read_shard_file(path: str, repair: bool = False) -> Tuple[Optional[dict], Dict[int, list]]:
    """Header and finished batches of a shard file; a torn last line (killed while writing) is
    ignored, and with ``repair`` cut off the file."""
    header, batches = None, {}
    if not os.path.isfile(path):
        return header, batches
    good = 0
    with open(path, "rb") as f:
        data = f.read()
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            break
        if not data[good + len(line) : good + len(line) + 1] == b"\n":
            break
        good += len(line) + 1
        if "header" in obj:
            header = obj["header"]
        else:
            batches[int(obj["batch"])] = obj["results"]
    if repair and good < len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return header, batches


def _fingerprint(records: Sequence[ImageRecord], batch_size: int, settings: Dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"batch_size": batch_size, "settings": settings}, sort_keys=True).encode())
    for r in records:
        h.update(json.dumps([r.image_id, r.file_name, r.captions]).encode())
    return h.hexdigest()[:16]


def run_shard(
    generator: PseudoBoxGenerator,
    records: Sequence[ImageRecord],
    shard_file: str,
    batch_size: int,
    settings: Dict[str, Any],
    progress: bool = True,
    max_batches: Optional[int] = None,
) -> Dict[int, list]:
    """Processes the unfinished batches of one shard, appending each to ``shard_file``.

    Args:
        records: this shard's records (in order).
        settings: everything that changes the results (recorded in the header; a rerun with other
            settings or inputs refuses to mix results).
        max_batches: stop after this many new batches (tests of the resume logic).

    Returns:
        dict: batch index -> results, for the whole shard.
    """
    fp = _fingerprint(records, batch_size, settings)
    header, done = read_shard_file(shard_file, repair=True)
    if header is not None and header.get("fingerprint") != fp:
        raise DetExtInputError(
            f"{shard_file}: made with other inputs or settings; remove it (or its "
            "folder) to start again"
        )
    os.makedirs(os.path.dirname(os.path.abspath(shard_file)), exist_ok=True)
    num_batches = (len(records) + batch_size - 1) // batch_size
    todo = [b for b in range(num_batches) if b not in done]
    if done:
        logger.info(
            "%s: resuming, %d of %d batches already done", shard_file, len(done), num_batches
        )
    with open(shard_file, "ab") as f:
        if header is None:
            f.write(
                (
                    json.dumps(
                        {
                            "header": {
                                "fingerprint": fp,
                                "num_records": len(records),
                                "batch_size": batch_size,
                            }
                        }
                    )
                    + "\n"
                ).encode()
            )
            f.flush()
        bar = tqdm(
            total=len(records),
            initial=len(records)
            - sum(len(records[b * batch_size : (b + 1) * batch_size]) for b in todo),
            disable=not progress,
            unit="img",
            desc=os.path.basename(shard_file),
        )
        for n, b in enumerate(todo):
            if max_batches is not None and n >= max_batches:
                break
            batch = records[b * batch_size : (b + 1) * batch_size]
            results = generator.process(batch)
            f.write((json.dumps({"batch": b, "results": results}) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
            done[b] = results
            bar.update(len(batch))
        bar.close()
    return done
