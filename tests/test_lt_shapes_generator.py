# Copyright (c) det_ext authors.
"""LT-Shapes: determinism, caching, long-tail statistics, exact masks and captions."""
import hashlib
import json
import os
from collections import Counter

import numpy as np
import pycocotools.mask as mask_util
import pytest
from conftest import TINY_SPEC

from det_ext.data import LTShapesSpec, generate_lt_shapes
from det_ext.data.lt_shapes import build_categories, plan_instance_counts, pluralize

SIMCAL_BINS = [(1, 20), (20, 400), (400, 8000), (8000, float("inf"))]


def _digest_tree(folder: str) -> str:
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            h.update(name.encode())
            with open(os.path.join(dirpath, name), "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def default_world(datasets_root):
    folder = generate_lt_shapes(LTShapesSpec(), datasets_root)
    with open(os.path.join(folder, "train.json")) as f:
        train = json.load(f)
    with open(os.path.join(folder, "val.json")) as f:
        val = json.load(f)
    return train, val


def test_generation_is_deterministic_and_seeded(tmp_path):
    a = generate_lt_shapes(TINY_SPEC, str(tmp_path / "a"))
    b = generate_lt_shapes(TINY_SPEC, str(tmp_path / "b"))
    assert _digest_tree(a) == _digest_tree(b)
    other = LTShapesSpec(**{**TINY_SPEC.__dict__, "seed": TINY_SPEC.seed + 1})
    c = generate_lt_shapes(other, str(tmp_path / "c"))
    assert _digest_tree(c) != _digest_tree(a)


def test_cache_is_reused_only_for_equal_parameters(tmp_path):
    folder = generate_lt_shapes(TINY_SPEC, str(tmp_path))
    mtime = os.path.getmtime(os.path.join(folder, "train.json"))
    assert generate_lt_shapes(TINY_SPEC, str(tmp_path)) == folder
    assert os.path.getmtime(os.path.join(folder, "train.json")) == mtime
    # A different spec never lands in the same folder ...
    bigger = LTShapesSpec(**{**TINY_SPEC.__dict__, "num_train_images": 49})
    assert generate_lt_shapes(bigger, str(tmp_path)) != folder
    # ... and a folder whose recorded parameters differ is refused, not silently reused.
    spec_file = os.path.join(folder, "spec.json")
    with open(spec_file) as f:
        recorded = json.load(f)
    recorded["image_size"] = 65
    with open(spec_file, "w") as f:
        json.dump(recorded, f)
    with pytest.raises(RuntimeError, match="differ"):
        generate_lt_shapes(TINY_SPEC, str(tmp_path))


def test_default_world_covers_every_frequency_group_and_bin(default_world):
    train, val = default_world
    cats = train["categories"]
    counts = Counter(a["category_id"] for a in train["annotations"])
    images = {}
    for a in train["annotations"]:
        images.setdefault(a["category_id"], set()).add(a["image_id"])
    for c in cats:  # the statistics in the file are the real ones
        assert c["instance_count"] == counts[c["id"]]
        assert c["image_count"] == len(images.get(c["id"], ()))
        expected = "r" if c["image_count"] <= 10 else ("c" if c["image_count"] <= 100 else "f")
        assert c["frequency"] == expected and c["image_count"] >= 1
    groups = Counter(c["frequency"] for c in cats)
    assert groups["r"] >= 5 and groups["c"] >= 5 and groups["f"] >= 5
    for lo, hi in SIMCAL_BINS:
        assert any(lo <= c["instance_count"] < hi for c in cats), (lo, hi)
    # Rare classes are rare in training, not absent from validation.
    val_counts = Counter(a["category_id"] for a in val["annotations"])
    assert min(val_counts[c["id"]] for c in cats) >= 20
    # Every twin is rare and is a near-colour copy of a frequent category's shape.
    by_name = {c["name"]: c for c in cats}
    twins = [c for c in cats if c["twin_of"]]
    assert len(twins) == 8
    for t in twins:
        head = by_name[t["twin_of"]]
        assert t["frequency"] == "r" and head["frequency"] in ("f", "c")
        assert t["name"].split()[-1] == head["name"].split()[-1]
    assert train["info"]["spec"]["seed"] == 0


def test_masks_match_boxes_and_areas(default_world):
    _, val = default_world
    heights = {im["id"]: im["height"] for im in val["images"]}
    for ann in val["annotations"][:400]:
        rle = ann["segmentation"]
        assert rle["size"] == [heights[ann["image_id"]]] * 2
        mask = mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        ys, xs = np.nonzero(mask)
        box = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        assert ann["bbox"] == [float(v) for v in box]
        assert ann["area"] == float(mask.sum()) >= 24
        assert mask_util.area(rle) == mask.sum()
        np.testing.assert_allclose(mask_util.toBbox(rle), ann["bbox"])


def test_federated_fields_and_captions(default_world):
    train, _ = default_world
    names = {c["id"]: c for c in train["categories"]}
    anns = {}
    for a in train["annotations"]:
        anns.setdefault(a["image_id"], []).append(a["category_id"])
    for im in train["images"][:200]:
        present = set(anns.get(im["id"], []))
        assert set(im["neg_category_ids"]) == set(names) - present
        assert im["not_exhaustive_category_ids"] == []
        assert len(im["captions"]) == 2
        # The first caption names every category present (canonical name, synonym or plural).
        for cid in present:
            forms = names[cid]["synonyms"] + names[cid]["plurals"]
            assert any(f in im["captions"][0] for f in forms), (im["captions"][0], forms)
    assert sum(len(v) > 1 for v in anns.values()) > 0.8 * len(anns)  # several instances per image


def test_vocabulary_names_synonyms_and_plurals():
    cats = build_categories(30, 8)
    assert len({c.name for c in cats}) == 30
    assert pluralize("dark blue cross") == "dark blue crosses"
    assert pluralize("red circle") == "red circles"
    assert pluralize("green plus sign") == "green plus signs"
    singulars, plurals = cats[0].surface_forms()
    assert singulars[0] == cats[0].name and plurals[0] == pluralize(cats[0].name)
    assert any(c.texture == "striped" for c in cats)
    with pytest.raises(ValueError):
        build_categories(3, 0)


def test_instance_plan_long_tail_and_bad_parameters():
    plan = plan_instance_counts(LTShapesSpec())
    train = plan["train"]
    assert np.all(np.diff(train) <= 0) and train[-1] == 1 and train[0] >= 8000
    assert abs(train.sum() - 2500 * 5.5) / (2500 * 5.5) < 0.02
    with pytest.raises(ValueError, match="image_size"):
        LTShapesSpec(image_size=8)
    with pytest.raises(ValueError, match="num_twins"):
        LTShapesSpec(num_categories=10, num_twins=5)


def test_killed_generation_leaves_nothing_and_is_cleaned(tmp_path):
    from det_ext.data.lt_shapes import lt_shapes_dir

    folder = lt_shapes_dir(TINY_SPEC, str(tmp_path))
    stale = f"{folder}.tmp-999999999"  # a dead process's half-written world
    os.makedirs(os.path.join(stale, "images"))
    assert generate_lt_shapes(TINY_SPEC, str(tmp_path)) == folder
    assert not os.path.exists(stale)
    assert sorted(os.listdir(os.path.dirname(folder))) == [os.path.basename(folder)]
