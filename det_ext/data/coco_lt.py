# Copyright (c) det_ext authors.
"""COCO-LT: a long-tailed subset of COCO train2017 with given per-class instance counts.

The reference COCO-LT (SimCal, docs/simcal.md) has 80 classes and 666,493 instances; head classes
keep all their COCO annotations, tail classes keep few. The original sampling recipe is not
published, so :func:`build_coco_lt_train` reproduces the **per-class instance counts** exactly
with a documented, seeded procedure: for every class whose target is below its COCO count, the
images containing it are shuffled and taken whole (all their instances of that class) while they
fit into the remaining budget, and the last gap is filled with a random subset of one image's
instances. Annotations of other classes are never touched, so every class is sampled
independently and hits its target exactly. Images that end up without annotations are dropped.

Output is LVIS format: an image's ``neg_category_ids`` are the classes COCO has no annotation of
in that image (COCO is exhaustive), its ``not_exhaustive_category_ids`` the classes whose
annotations were removed there; categories carry ``frequency``/``image_count``/``instance_count``
of the sampled split. Crowd annotations are left out (LVIS format has none); a class present only
as a crowd region is neither positive nor negative for that image, so the evaluator ignores it.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from det_ext.data.lt_shapes.generator import frequency_group
from det_ext.utils.errors import DatasetFormatError

__all__ = ["REFERENCE_COCO_LT_COUNTS", "build_coco_lt_train", "coco_to_lvis_val",
           "resolve_target_counts"]

#: Training instances per class of the reference COCO-LT, by contiguous label 1..80 (COCO
#: categories in increasing id order), from SimCal's class_to_imageid_and_inscount_coco_sampled.pt.
REFERENCE_COCO_LT_COUNTS = (
    262465, 3530, 43867, 8725, 686, 248, 408, 9973, 10759, 12884,
    11, 22, 12, 9838, 10806, 198, 167, 1518, 9509, 7079,
    374, 61, 420, 383, 8720, 11431, 12354, 6112, 5360, 14,
    2902, 22, 6221, 9076, 67, 52, 547, 4678, 793, 24342,
    5047, 20650, 774, 7190, 1025, 14358, 9458, 589, 657, 4042,
    6394, 2746, 48, 100, 6594, 4684, 38491, 629, 2689, 51,
    15714, 73, 710, 286, 52, 765, 21, 4699, 52, 65,
    47, 114, 50, 24715, 4004, 1473, 24, 693, 71, 15,
)


def _check_coco(data: Any, source: str) -> None:
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{source}: top level must be an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetFormatError(f"{source}: field '{key}' is missing or not a list")
    image_ids = {img.get("id") for img in data["images"]}
    cat_ids = {c.get("id") for c in data["categories"]}
    for i, ann in enumerate(data["annotations"]):
        for key in ("id", "image_id", "category_id", "bbox"):
            if key not in ann:
                raise DatasetFormatError(f"{source}: annotations[{i}] lacks field '{key}'")
        if ann["image_id"] not in image_ids:
            raise DatasetFormatError(f"{source}: annotations[{i}].image_id {ann['image_id']} "
                                     "refers to an unknown image")
        if ann["category_id"] not in cat_ids:
            raise DatasetFormatError(f"{source}: annotations[{i}].category_id "
                                     f"{ann['category_id']} is not in 'categories'")


def resolve_target_counts(categories: List[dict], counts: Optional[Mapping[str, int]] = None,
                          source: str = "counts") -> Dict[int, int]:
    """Target instance count per COCO category id.

    Args:
        categories (list[dict]): COCO categories.
        counts (mapping or None): ``{category name or id (as str): count}`` for every category;
            None for :data:`REFERENCE_COCO_LT_COUNTS` (needs exactly 80 categories).
        source (str): name used in error messages.
    """
    cats = sorted(categories, key=lambda c: c["id"])
    if counts is None:
        if len(cats) != len(REFERENCE_COCO_LT_COUNTS):
            raise DatasetFormatError(f"the reference COCO-LT counts cover 80 categories, the COCO "
                                     f"file has {len(cats)}; give a count table (--counts)")
        return {c["id"]: REFERENCE_COCO_LT_COUNTS[i] for i, c in enumerate(cats)}
    out = {}
    for c in cats:
        value = counts.get(c["name"], counts.get(str(c["id"])))
        if value is None:
            raise DatasetFormatError(f"{source}: no count for category '{c['name']}' "
                                     f"(id {c['id']})")
        if int(value) < 0:
            raise DatasetFormatError(f"{source}: negative count for category '{c['name']}'")
        out[c["id"]] = int(value)
    return out


def _lvis_category(c: dict, image_count: int, instance_count: int) -> dict:
    return {"id": c["id"], "name": c["name"], "supercategory": c.get("supercategory", ""),
            "synonyms": [c["name"]], "synset": c["name"], "def": "",
            "image_count": int(image_count), "instance_count": int(instance_count),
            "frequency": frequency_group(int(image_count))}


def _lvis_image(img: dict, neg: List[int], not_exhaustive: List[int]) -> dict:
    out = {k: img[k] for k in ("id", "file_name", "height", "width", "coco_url") if k in img}
    out["neg_category_ids"] = sorted(neg)
    out["not_exhaustive_category_ids"] = sorted(not_exhaustive)
    return out


def _lvis_annotation(ann: dict) -> dict:
    out = {k: ann[k] for k in ("id", "image_id", "category_id", "bbox", "area", "segmentation")
           if k in ann}
    if "area" not in out:
        out["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
    return out


def build_coco_lt_train(coco: Dict[str, Any], targets: Mapping[int, int], seed: int = 0,
                        source: str = "COCO train") -> Dict[str, Any]:
    """Samples a long-tailed LVIS-format training split from COCO-format ``coco``.

    Args:
        coco (dict): COCO instances JSON (train2017).
        targets (mapping): COCO category id -> target instance count (a class with fewer COCO
            instances than its target keeps them all).
        seed (int): random seed; the output depends only on the input and the seed.
        source (str): name used in error messages.

    Returns:
        dict: LVIS-format JSON of the sampled split.
    """
    _check_coco(coco, source)
    rng = np.random.default_rng(seed)
    anns = [a for a in coco["annotations"] if not a.get("iscrowd", 0)]
    by_cat_img: Dict[int, Dict[int, List[dict]]] = defaultdict(lambda: defaultdict(list))
    for a in sorted(anns, key=lambda a: a["id"]):
        by_cat_img[a["category_id"]][a["image_id"]].append(a)
    kept: List[dict] = []
    removed_from: Dict[int, set] = defaultdict(set)  # image id -> classes with dropped annotations
    for cat in sorted(c["id"] for c in coco["categories"]):
        per_img = by_cat_img.get(cat, {})
        total = sum(len(v) for v in per_img.values())
        budget = int(targets[cat])
        if budget >= total:
            kept += [a for img in sorted(per_img) for a in per_img[img]]
            continue
        order = [sorted(per_img)[i] for i in rng.permutation(len(per_img))]
        chosen, rest = [], []
        for img in order:
            if len(per_img[img]) <= budget:
                chosen += per_img[img]
                budget -= len(per_img[img])
            else:
                rest.append(img)
            if budget == 0:
                break
        if budget > 0:  # every remaining image holds more than the gap: take part of one
            part = per_img[rest[0]]
            chosen += [part[i] for i in sorted(rng.choice(len(part), budget, replace=False))]
        chosen_ids = {a["id"] for a in chosen}
        for img, lst in per_img.items():
            if any(a["id"] not in chosen_ids for a in lst):
                removed_from[img].add(cat)
        kept += chosen
    return _assemble(coco, kept, removed_from)


def _assemble(coco: Dict[str, Any], kept: List[dict],
              removed_from: Dict[int, set]) -> Dict[str, Any]:
    all_cats = sorted(c["id"] for c in coco["categories"])
    present: Dict[int, set] = defaultdict(set)  # classes annotated in the original image
    for a in coco["annotations"]:
        present[a["image_id"]].add(a["category_id"])
    kept_by_img: Dict[int, List[dict]] = defaultdict(list)
    for a in sorted(kept, key=lambda a: a["id"]):
        kept_by_img[a["image_id"]].append(a)
    images, annotations = [], []
    img_count: Dict[int, int] = defaultdict(int)
    inst_count: Dict[int, int] = defaultdict(int)
    for img in sorted(coco["images"], key=lambda i: i["id"]):
        lst = kept_by_img.get(img["id"])
        if not lst:
            continue
        neg = [c for c in all_cats if c not in present[img["id"]]]
        images.append(_lvis_image(img, neg, sorted(removed_from.get(img["id"], ()))))
        annotations += [_lvis_annotation(a) for a in lst]
        for c in {a["category_id"] for a in lst}:
            img_count[c] += 1
        for a in lst:
            inst_count[a["category_id"]] += 1
    cats = [_lvis_category(c, img_count[c["id"]], inst_count[c["id"]])
            for c in sorted(coco["categories"], key=lambda c: c["id"])]
    return {"info": {"description": "COCO-LT (det_ext make_coco_lt)"}, "images": images,
            "annotations": annotations, "categories": cats}


def coco_to_lvis_val(coco_val: Dict[str, Any], train_categories: List[dict],
                     source: str = "COCO val") -> Dict[str, Any]:
    """COCO val2017 in LVIS format for evaluating COCO-LT models.

    Every image is kept; ``neg_category_ids`` are the classes absent from the image (COCO is
    exhaustive), ``not_exhaustive_category_ids`` is empty; categories are ``train_categories``
    (the COCO-LT training statistics, which define the frequency groups and instance bins).
    """
    _check_coco(coco_val, source)
    train_ids = sorted(c["id"] for c in train_categories)
    if train_ids != sorted(c["id"] for c in coco_val["categories"]):
        raise DatasetFormatError(f"{source}: categories differ from the COCO-LT training split")
    present: Dict[int, set] = defaultdict(set)
    for a in coco_val["annotations"]:
        present[a["image_id"]].add(a["category_id"])
    images = [_lvis_image(img, [c for c in train_ids if c not in present[img["id"]]], [])
              for img in sorted(coco_val["images"], key=lambda i: i["id"])]
    anns = [_lvis_annotation(a) for a in sorted(coco_val["annotations"], key=lambda a: a["id"])
            if not a.get("iscrowd", 0)]
    return {"info": {"description": "COCO val2017 for COCO-LT (det_ext make_coco_lt)"},
            "images": images, "annotations": anns,
            "categories": sorted((dict(c) for c in train_categories), key=lambda c: c["id"])}
