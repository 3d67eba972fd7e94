# Copyright (c) det_ext authors.
"""Deterministic generation of LT-Shapes splits as LVIS-format JSON plus PNG images.

Layout of a generated world (``root/lt_shapes/<digest>/``)::

    spec.json                 every parameter (the cache key's preimage)
    train.json, val.json      LVIS-format annotations (RLE masks, federated fields, captions)
    captions_train.json, captions_val.json   [{"image_id", "file_name", "captions"}]
    vocab.json                {category name: [surface forms, singular and plural]}
    images/train/*.png, images/val/*.png
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from det_ext.utils.io import atomic_write_json

from .captions import caption_image
from .render import Placement, paint_instance, render_background, shape_mask
from .spec import LTShapesSpec, plan_instance_counts
from .vocabulary import CategorySpec

__all__ = ["generate_lt_shapes", "lt_shapes_dir", "frequency_group"]

logger = logging.getLogger(__name__)

_SPLITS = ("train", "val")
_MIN_VISIBLE_FRACTION = 0.5
_MIN_VISIBLE_PIXELS = 24


def frequency_group(image_count: int) -> str:
    """LVIS frequency group from a training image count: 'r' (<= 10), 'c' (11..100), 'f' (> 100)."""
    return "r" if image_count <= 10 else ("c" if image_count <= 100 else "f")


def lt_shapes_dir(spec: LTShapesSpec, root: str) -> str:
    """Folder of the world given by ``spec`` under the datasets ``root``."""
    return os.path.join(root, "lt_shapes", spec.digest())


def _assign_instances(counts: np.ndarray, num_images: int,
                      rng: np.random.Generator) -> List[List[int]]:
    """Deals the labels of ``counts`` (per category) into ``num_images`` images, >= 1 each."""
    labels = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(labels)
    extra = max(len(labels) - num_images, 0)
    sizes = rng.multinomial(extra, np.full(num_images, 1.0 / num_images)) + 1
    sizes[-1] += len(labels) - sizes.sum()  # fewer labels than images: the last ones stay empty
    out, start = [], 0
    for s in sizes:
        out.append([int(x) for x in labels[start : start + max(int(s), 0)]])
        start += max(int(s), 0)
    return out


def _layout_image(
    labels: Sequence[int], categories: Sequence[CategorySpec], size: int, rng: np.random.Generator
) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """Renders one image.

    Returns:
        tuple: the uint8 (size, size, 3) image, and ``[(label, visible bool mask (size, size))]``
        for the instances that could be placed with enough visible area.
    """
    image = render_background(rng, size, size)
    r_hi = size * float(np.clip(0.42 / math.sqrt(max(len(labels), 1)), 0.09, 0.17))
    r_lo = size * 0.065
    placed: List[Tuple[int, np.ndarray]] = []  # (label, full mask), in drawing order
    for label in labels:
        for _ in range(30):
            r = rng.uniform(r_lo, max(r_hi, r_lo + 1))
            margin = 0.6 * r
            p = Placement(rng.uniform(margin, size - margin), rng.uniform(margin, size - margin),
                          r, rng.uniform(0, 2 * math.pi))
            full = shape_mask(categories[label].shape, p, size, size)
            if full.sum() < _MIN_VISIBLE_PIXELS:
                continue
            trial = placed + [(label, full)]
            if all(v.sum() >= _MIN_VISIBLE_FRACTION * m.sum() for (_, m), v in
                   zip(trial, _visible_masks([m for _, m in trial]))):
                placed = trial
                paint_instance(image, full, categories[label], rng)
                break
    visible = _visible_masks([m for _, m in placed])
    return image.astype(np.uint8), [(lab, v) for (lab, _), v in zip(placed, visible)]


def _visible_masks(masks: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Visible part of each mask when later masks are drawn on top."""
    out: List[np.ndarray] = []
    cover = np.zeros_like(masks[0]) if masks else None
    for m in reversed(masks):
        out.append(m & ~cover)
        cover = cover | m
    return out[::-1]


def _annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray) -> Dict[str, Any]:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "id": ann_id, "image_id": image_id, "category_id": category_id,
        "bbox": [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)],
        "area": float(mask.sum()), "segmentation": rle, "iscrowd": 0,
    }


def _generate_split(spec: LTShapesSpec, split: str, counts: np.ndarray, out_dir: str,
                    first_image_id: int) -> Dict[str, Any]:
    categories = spec.categories()
    split_index = _SPLITS.index(split)
    num_images = spec.num_train_images if split == "train" else spec.num_val_images
    rng = np.random.default_rng([spec.seed, split_index])
    assignment = _assign_instances(counts, num_images, rng)
    os.makedirs(os.path.join(out_dir, "images", split), exist_ok=True)
    images, annotations = [], []
    all_ids = set(range(1, len(categories) + 1))
    for i, labels in enumerate(assignment):
        rng = np.random.default_rng([spec.seed, split_index, i, 1])
        image, instances = _layout_image(labels, categories, spec.image_size, rng)
        image_id = first_image_id + i
        file_name = f"images/{split}/{image_id:07d}.png"
        Image.fromarray(image).save(os.path.join(out_dir, file_name), compress_level=1)
        present = {lab + 1 for lab, _ in instances}
        images.append({
            "id": image_id, "file_name": file_name, "height": spec.image_size,
            "width": spec.image_size, "neg_category_ids": sorted(all_ids - present),
            "not_exhaustive_category_ids": [],
            "captions": caption_image(categories, [lab for lab, _ in instances],
                                      spec.captions_per_image, rng),
        })
        for lab, mask in instances:
            ann_id = split_index * 10_000_000 + len(annotations) + 1
            annotations.append(_annotation(ann_id, image_id, lab + 1, mask))
        if (i + 1) % 500 == 0 or i + 1 == num_images:
            logger.info("LT-Shapes: rendered %d/%d %s images", i + 1, num_images, split)
    return {"images": images, "annotations": annotations}


def _category_records(spec: LTShapesSpec, train: Dict[str, Any]) -> List[Dict[str, Any]]:
    """LVIS-style category records carrying the *training* statistics (as LVIS val does)."""
    inst = np.zeros(spec.num_categories, dtype=np.int64)
    imgs: List[set] = [set() for _ in range(spec.num_categories)]
    for a in train["annotations"]:
        inst[a["category_id"] - 1] += 1
        imgs[a["category_id"] - 1].add(a["image_id"])
    records = []
    for k, cat in enumerate(spec.categories()):
        singulars, plurals = cat.surface_forms()
        records.append({
            "id": k + 1, "name": cat.name, "synonyms": singulars, "plurals": plurals,
            "def": f"a {cat.texture} {cat.colour} {cat.shape} drawn on a textured background",
            "synset": f"lt_shapes.{cat.name.replace(' ', '_')}.n.01",
            "frequency": frequency_group(len(imgs[k])), "image_count": len(imgs[k]),
            "instance_count": int(inst[k]), "twin_of": cat.twin_of,
        })
    return records


def _remove_stale_temporaries(out_dir: str) -> None:
    """Deletes temporary folders left by generations that were killed (their process is gone)."""
    parent, base = os.path.split(out_dir)
    if not os.path.isdir(parent):
        return
    for name in os.listdir(parent):
        if not name.startswith(f"{base}.tmp-"):
            continue
        pid = name.rsplit("-", 1)[-1]
        alive = pid.isdigit() and os.path.exists(f"/proc/{pid}")
        if not alive or int(pid) == os.getpid():
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def generate_lt_shapes(spec: LTShapesSpec, root: str) -> str:
    """Generates the world described by ``spec`` under ``root`` unless it is already there.

    The world is written to a temporary folder and renamed into place, so an interrupted run leaves
    nothing half-written. An existing folder is reused only when its ``spec.json`` equals ``spec``.

    Args:
        spec (LTShapesSpec): the world's parameters.
        root (str): datasets root (usually ``$DETECTRON2_DATASETS``).

    Returns:
        str: the world's folder.
    """
    out_dir = lt_shapes_dir(spec, root)
    spec_file = os.path.join(out_dir, "spec.json")
    if os.path.isdir(out_dir):
        try:
            with open(spec_file) as f:
                found = json.load(f)
        except (OSError, ValueError) as e:
            raise RuntimeError(f"{spec_file}: unreadable LT-Shapes cache ({e}); delete {out_dir}")
        if found != spec.to_dict():
            raise RuntimeError(f"{spec_file}: cached LT-Shapes parameters differ from the "
                               f"requested ones; delete {out_dir} to regenerate")
        return out_dir
    _remove_stale_temporaries(out_dir)
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    logger.info("Generating LT-Shapes world %s in %s", spec.digest(), out_dir)
    plan = plan_instance_counts(spec)
    train = _generate_split(spec, "train", plan["train"], tmp, first_image_id=1)
    val = _generate_split(spec, "val", plan["val"], tmp, first_image_id=spec.num_train_images + 1)
    categories = _category_records(spec, train)
    info = {"description": "LT-Shapes, a synthetic long-tailed world (det_ext)",
            "spec": spec.to_dict()}
    for split, data in (("train", train), ("val", val)):
        atomic_write_json(os.path.join(tmp, f"{split}.json"),
                          {"info": info, "licenses": [], "categories": categories, **data})
        atomic_write_json(os.path.join(tmp, f"captions_{split}.json"), [
            {"image_id": im["id"], "file_name": im["file_name"], "captions": im["captions"]}
            for im in data["images"]])
    atomic_write_json(os.path.join(tmp, "vocab.json"),
                      {c["name"]: c["synonyms"] + c["plurals"] for c in categories})
    atomic_write_json(os.path.join(tmp, "spec.json"), spec.to_dict())
    try:
        os.rename(tmp, out_dir)
    except OSError:  # another process finished the same world first
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(out_dir):
            raise
    return out_dir
