# Copyright (c) det_ext authors.
"""tools/make_coco_lt.py on a synthetic COCO-format file: exact counts, determinism, LVIS format."""
import json
import os
from collections import Counter

import numpy as np
import pytest

from det_ext.data.coco_lt import build_coco_lt_train, coco_to_lvis_val, resolve_target_counts
from det_ext.data.datasets import load_lvis_format_json
from det_ext.utils.errors import DatasetFormatError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _synthetic_coco(seed=0, num_images=60, cats=(1, 2, 5, 9)):
    rng = np.random.default_rng(seed)
    images, anns = [], []
    aid = 1
    for i in range(1, num_images + 1):
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "height": 100, "width": 120})
        for c in cats:
            for _ in range(int(rng.integers(0, 4))):
                x, y = rng.uniform(0, 60, 2)
                anns.append({"id": aid, "image_id": i, "category_id": int(c), "iscrowd": 0,
                             "bbox": [float(x), float(y), 10.0, 12.0], "area": 120.0,
                             "segmentation": [[x, y, x + 10, y, x + 10, y + 12, x, y + 12]]})
                aid += 1
    anns.append({"id": aid, "image_id": 1, "category_id": cats[0], "iscrowd": 1,
                 "bbox": [0, 0, 5, 5], "area": 25,
                 "segmentation": {"counts": [0, 25], "size": [100, 120]}})
    return {"images": images, "annotations": anns,
            "categories": [{"id": c, "name": f"cat{c}", "supercategory": "x"} for c in cats]}


def test_exact_counts_deterministic_and_lvis_format(tmp_path):
    coco = _synthetic_coco()
    avail = Counter(a["category_id"] for a in coco["annotations"] if not a["iscrowd"])
    targets = {1: avail[1] + 10, 2: 37, 5: 3, 9: 1}  # head class kept whole, others reduced
    out = build_coco_lt_train(coco, targets, seed=4)
    got = Counter(a["category_id"] for a in out["annotations"])
    assert got == Counter({1: avail[1], 2: 37, 5: 3, 9: 1})
    assert out == build_coco_lt_train(coco, targets, seed=4)  # deterministic by seed
    assert out != build_coco_lt_train(coco, targets, seed=5)
    # head-class annotations untouched; no crowd annotations
    assert {a["id"] for a in out["annotations"] if a["category_id"] == 1} == {
        a["id"] for a in coco["annotations"] if a["category_id"] == 1 and not a["iscrowd"]}
    present = {}
    for a in coco["annotations"]:
        present.setdefault(a["image_id"], set()).add(a["category_id"])
    kept = {}
    for a in out["annotations"]:
        kept.setdefault(a["image_id"], set()).add(a["category_id"])
    for img in out["images"]:
        assert img["id"] in kept  # no image without annotations
        assert set(img["neg_category_ids"]) == {1, 2, 5, 9} - present[img["id"]]
        # classes whose annotations were dropped there are flagged not exhaustive
        for c in img["not_exhaustive_category_ids"]:
            orig = sum(1 for a in coco["annotations"] if a["image_id"] == img["id"]
                       and a["category_id"] == c and not a["iscrowd"])
            now = sum(1 for a in out["annotations"]
                      if a["image_id"] == img["id"] and a["category_id"] == c)
            assert now < orig
    for cat in out["categories"]:
        imgs = {a["image_id"] for a in out["annotations"] if a["category_id"] == cat["id"]}
        assert cat["instance_count"] == got[cat["id"]] and cat["image_count"] == len(imgs)
        assert cat["frequency"] == ("r" if len(imgs) <= 10 else "c" if len(imgs) <= 100 else "f")
    # loads with det_ext's validated LVIS-format loader
    path = tmp_path / "coco_lt_train.json"
    path.write_text(json.dumps(out))
    dicts = load_lvis_format_json(str(path), str(tmp_path), check_images=False)
    assert sum(len(d["annotations"]) for d in dicts) == sum(got.values())


def test_val_split_carries_training_statistics():
    train = build_coco_lt_train(_synthetic_coco(0), {1: 5, 2: 50, 5: 2, 9: 40}, seed=0)
    val_coco = _synthetic_coco(1, num_images=10)
    val = coco_to_lvis_val(val_coco, train["categories"])
    assert len(val["images"]) == 10 and all(a.get("iscrowd", 0) == 0 for a in val["annotations"])
    assert val["categories"] == sorted(train["categories"], key=lambda c: c["id"])
    for img in val["images"]:
        cats = {a["category_id"] for a in val_coco["annotations"] if a["image_id"] == img["id"]}
        assert set(img["neg_category_ids"]) == {1, 2, 5, 9} - cats
        assert img["not_exhaustive_category_ids"] == []


def test_count_tables_and_errors():
    cats = [{"id": 3, "name": "a"}, {"id": 1, "name": "b"}]
    assert resolve_target_counts(cats, {"a": 4, "1": 7}) == {1: 7, 3: 4}
    with pytest.raises(DatasetFormatError, match="no count for category 'a'"):
        resolve_target_counts(cats, {"b": 1})
    with pytest.raises(DatasetFormatError, match="80 categories"):
        resolve_target_counts(cats, None)
    reference = resolve_target_counts([{"id": i, "name": str(i)} for i in range(90, 10, -1)], None)
    assert reference[11] == 262465 and reference[90] == 15 and sum(reference.values()) == 666493
    bad = _synthetic_coco()
    bad["annotations"][0]["category_id"] = 77
    with pytest.raises(DatasetFormatError, match=r"annotations\[0\].category_id 77"):
        build_coco_lt_train(bad, {1: 1, 2: 1, 5: 1, 9: 1})


def test_cli_writes_both_files(tmp_path):
    import subprocess
    import sys

    train, val = tmp_path / "train.json", tmp_path / "val.json"
    train.write_text(json.dumps(_synthetic_coco(0)))
    val.write_text(json.dumps(_synthetic_coco(1, num_images=5)))
    counts = tmp_path / "counts.json"
    counts.write_text(json.dumps({"cat1": 10, "cat2": 5, "cat5": 2, "cat9": 1}))
    out = tmp_path / "out"
    cmd = [sys.executable, "tools/make_coco_lt.py", "--coco-train", str(train), "--coco-val",
           str(val), "--counts", str(counts), "--out-dir", str(out), "--seed", "3"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((out / "coco_lt_train.json").read_text())
    got = Counter(a["category_id"] for a in data["annotations"])
    assert got == Counter({1: 10, 2: 5, 5: 2, 9: 1})
    assert (out / "coco_lt_val.json").is_file()
    counts.write_text("[1, 2]")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error:")
