# Copyright (c) det_ext authors.
"""Noise synthesis: rates, IoU distribution, determinism, registration, CLI and bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from det_ext.data.datasets import prepare_datasets, read_dataset_json
from det_ext.data.noise import (
    NoiseSpec,
    NoiseSpecError,
    add_box_noise,
    add_label_noise,
    _prior_transition,
    box_iou_xywh,
    make_noisy_dataset,
)
from det_ext.data.noisy_datasets import noisy_dataset_name, register_noisy_dataset
from det_ext.utils.errors import DetExtInputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _toy_dataset(n_images=50, per_image=4, num_cats=5, seed=0):
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "file_name": f"{i}.png", "height": 200, "width": 300}
              for i in range(n_images)]
    anns = []
    for img in images:
        for _ in range(per_image):
            w, h = rng.uniform(20, 60, size=2)
            x, y = rng.uniform(0, 300 - w), rng.uniform(0, 200 - h)
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "bbox": [x, y, w, h],
                         "category_id": int(rng.integers(1, num_cats + 1)), "iscrowd": 0,
                         "area": w * h, "segmentation": [[x, y, x + w, y, x + w, y + h]]})
    cats = [{"id": i + 1, "name": f"c{i}"} for i in range(num_cats)]
    return {"images": images, "annotations": anns, "categories": cats}


def test_box_noise_shift_bounds_and_uniform_statistics():
    boxes = np.tile([[100.0, 100.0, 40.0, 20.0]], (20000, 1))
    noisy = add_box_noise(boxes, 0.4, np.random.default_rng(0), image_wh=None)
    shifts = np.concatenate([noisy[:, :2], noisy[:, :2] + noisy[:, 2:]], 1) - \
        np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1)
    bounds = np.array([16.0, 8.0, 16.0, 8.0])  # Nb * (w, h, w, h)
    assert (np.abs(shifts) <= bounds + 1e-9).all()
    # U(-a, a): mean 0, variance a^2 / 3, each coordinate independently.
    np.testing.assert_allclose(shifts.mean(0), 0.0, atol=0.1 * bounds.max())
    np.testing.assert_allclose(shifts.var(0), bounds**2 / 3, rtol=0.05)
    assert abs(np.corrcoef(shifts[:, 0], shifts[:, 2])[0, 1]) < 0.05


def test_box_noise_mean_iou_matches_paper_anchor():
    data = _toy_dataset(n_images=300)
    iou40 = make_noisy_dataset(data, NoiseSpec(box_rate=0.4))["noise"]["mean_iou"]
    iou20 = make_noisy_dataset(data, NoiseSpec(box_rate=0.2))["noise"]["mean_iou"]
    iou0 = make_noisy_dataset(data, NoiseSpec(box_rate=0.0))["noise"]["mean_iou"]
    assert iou0 == pytest.approx(1.0, abs=1e-3)
    assert 0.42 <= iou40 <= 0.52  # the paper: about 0.45 at 40% box noise
    assert iou40 < iou20 < 0.8


def test_box_noise_clipped_to_image_and_min_size():
    boxes = np.array([[0.0, 0.0, 10.0, 10.0], [290.0, 190.0, 10.0, 10.0]] * 500)
    wh = np.tile([[300.0, 200.0]], (len(boxes), 1))
    noisy = add_box_noise(boxes, 1.0, np.random.default_rng(1), image_wh=wh, min_size=1.0)
    assert (noisy[:, 0] >= 0).all() and (noisy[:, 1] >= 0).all()
    assert (noisy[:, 0] + noisy[:, 2] <= 300 + 1e-9).all()
    assert (noisy[:, 1] + noisy[:, 3] <= 200 + 1e-9).all()
    assert (noisy[:, 2] >= 1.0 - 1e-9).all() and (noisy[:, 3] >= 1.0 - 1e-9).all()


def test_label_noise_rate_is_exact_and_flips_are_uniform():
    labels = np.random.default_rng(0).integers(0, 5, size=10000)
    noisy = add_label_noise(labels, 5, 0.4, np.random.default_rng(2))
    changed = noisy != labels
    assert changed.sum() == 4000
    # Symmetric noise: from class c, each of the 4 other classes with probability 1/4.
    from_zero = noisy[changed & (labels == 0)]
    counts = np.bincount(from_zero, minlength=5)
    assert counts[0] == 0
    np.testing.assert_allclose(counts[1:] / counts.sum(), 0.25, atol=0.05)
    pair = add_label_noise(labels, 5, 0.2, np.random.default_rng(2), mode="pairflip")
    flipped = pair != labels
    assert flipped.sum() == 2000
    assert ((labels[flipped] + 1) % 5 == pair[flipped]).all()


def test_label_noise_prior_mode_follows_class_frequencies():
    # Hand-computed rows: frequencies [3, 1, 0] without the own class, renormalised; a class
    # whose others are all absent flips uniformly.
    np.testing.assert_allclose(_prior_transition(np.array([0, 0, 0, 1]), 3),
                               [[0, 1, 0], [1, 0, 0], [0.75, 0.25, 0]])
    np.testing.assert_allclose(_prior_transition(np.array([0, 0]), 2), [[0, 1], [1, 0]])
    # Long tail 8000 / 1600 / 400: flips out of class 0 go to 1 and 2 as 1600 : 400.
    labels = np.repeat([0, 1, 2], [8000, 1600, 400])
    noisy = add_label_noise(labels, 3, 0.2, np.random.default_rng(0), mode="prior")
    changed = noisy != labels
    assert changed.sum() == 2000
    from_zero = noisy[changed & (labels == 0)]
    assert abs((from_zero == 1).mean() - 0.8) < 0.03
    # Share of wrong labels per given label: symmetric noise makes the rarest label the noisiest
    # (expected 0.75 for class 2); prior noise gives the non-head labels the same rate (~0.5).
    def wrong(noisy_labels):
        return [float((labels[noisy_labels == c] != c).mean()) for c in range(3)]
    sym = wrong(add_label_noise(labels, 3, 0.2, np.random.default_rng(0)))
    prior = wrong(noisy)
    assert sym[2] > 0.7 and sym[2] - sym[1] > 0.25
    assert abs(prior[2] - prior[1]) < 0.05 and prior[2] < sym[2] - 0.2


def test_label_noise_transition_matrix():
    mat = [[0, 1, 0], [0, 0, 1], [0.5, 0.5, 0]]
    labels = np.repeat([0, 1, 2], 1000)
    noisy = add_label_noise(labels, 3, 1.0, np.random.default_rng(0), "matrix", mat)
    assert (noisy[labels == 0] == 1).all() and (noisy[labels == 1] == 2).all()
    assert abs((noisy[labels == 2] == 0).mean() - 0.5) < 0.06
    with pytest.raises(NoiseSpecError, match="zero diagonal"):
        add_label_noise(labels, 3, 0.5, np.random.default_rng(0), "matrix", np.eye(3))


def test_noisy_dataset_determinism_and_clean_ids():
    data = _toy_dataset()
    spec = NoiseSpec(label_rate=0.4, box_rate=0.4, seed=7)
    a, b = make_noisy_dataset(data, spec), make_noisy_dataset(data, spec)
    assert a == b
    c = make_noisy_dataset(data, NoiseSpec(label_rate=0.4, box_rate=0.4, seed=8))
    assert c["annotations"] != a["annotations"]
    clean = {x["id"]: x for x in data["annotations"]}
    for ann in a["annotations"]:
        src = clean[ann["clean_id"]]
        assert ann["clean_bbox"] == src["bbox"] and ann["clean_category_id"] == src["category_id"]
        assert "segmentation" not in ann
    flipped = np.mean([x["category_id"] != x["clean_category_id"] for x in a["annotations"]])
    assert flipped == pytest.approx(0.4, abs=1 / len(a["annotations"]))
    assert data["annotations"][0]["bbox"] == clean[1]["bbox"]  # input untouched
    assert "clean_id" not in data["annotations"][0]


def test_crowd_annotations_are_copied_unchanged():
    data = _toy_dataset(n_images=3)
    data["annotations"][0]["iscrowd"] = 1
    out = make_noisy_dataset(data, NoiseSpec(label_rate=1.0, box_rate=0.4))
    crowd = [a for a in out["annotations"] if a.get("iscrowd")]
    assert crowd == [data["annotations"][0]]


@pytest.mark.parametrize("kwargs", [{"label_rate": 1.5}, {"box_rate": -0.1},
                                    {"label_rate": "0.4"}, {"label_mode": "bogus"}])
def test_bad_noise_parameters_raise(kwargs):
    with pytest.raises(DetExtInputError):
        NoiseSpec(**kwargs)


def test_empty_dataset_raises():
    data = _toy_dataset(n_images=2)
    data["annotations"] = []
    with pytest.raises(NoiseSpecError, match="no annotations"):
        make_noisy_dataset(data, NoiseSpec(label_rate=0.2), "empty.json")


def test_registered_noisy_dataset_keeps_clean_annotations(tiny_world):
    name = register_noisy_dataset(tiny_world["train"], 0.4, 0.4, seed=0)
    assert name == noisy_dataset_name(tiny_world["train"], 0.4, 0.4) == \
        "lt_shapes_tiny_train_noisy_l40_b40"
    dicts = DatasetCatalog.get(name)
    clean = {(d["image_id"], a["id"]): a for d in DatasetCatalog.get(tiny_world["train"])
             for a in d["annotations"]}
    anns = [(d["image_id"], a) for d in dicts for a in d["annotations"]]
    assert len(anns) == len(clean)
    flips = 0
    ious = []
    for image_id, a in anns:
        src = clean[(image_id, a["clean_id"])]
        np.testing.assert_allclose(a["clean_bbox"], src["bbox"], atol=1e-6)
        assert a["clean_category_id"] == src["category_id"]
        flips += a["category_id"] != src["category_id"]
        ious.append(box_iou_xywh(a["bbox"], src["bbox"])[0])
    assert flips == round(0.4 * len(anns))
    assert 0.3 < np.mean(ious) < 0.65
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == MetadataCatalog.get(tiny_world["train"]).thing_classes
    assert meta.clean_dataset == tiny_world["train"]


def test_on_demand_registration_by_name(tiny_world):
    name = "lt_shapes_tiny_train_noisy_l20_b0_s3"
    prepare_datasets([name])
    assert name in DatasetCatalog.list()
    noise = read_dataset_json(MetadataCatalog.get(name).json_file)["noise"]
    assert noise["label_rate"] == 0.2 and noise["box_rate"] == 0.0 and noise["seed"] == 3
    with pytest.raises(DetExtInputError, match="at most 100"):
        prepare_datasets(["lt_shapes_tiny_train_noisy_l150_b0"])


def test_cli_writes_noisy_json_and_rejects_bad_rate(tmp_path):
    src = tmp_path / "clean.json"
    src.write_text(json.dumps(_toy_dataset(n_images=5)))
    out = tmp_path / "noisy.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, os.path.join(REPO, "tools/make_noisy_dataset.py"),
                          "--input", str(src), "--output", str(out), "--label-rate", "0.2",
                          "--box-rate", "0.2", "--seed", "1"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    noisy = json.loads(out.read_text())
    assert noisy["noise"]["seed"] == 1 and all("clean_id" in a for a in noisy["annotations"])
    bad = subprocess.run([sys.executable, os.path.join(REPO, "tools/make_noisy_dataset.py"),
                          "--input", str(src), "--output", str(tmp_path / "x.json"),
                          "--label-rate", "1.2"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: noise label_rate must be in")
    assert not (tmp_path / "x.json").exists()


def test_noisy_copy_of_a_dataset_without_json(tmp_path):
    """Datasets registered by a loader only (e.g. Detectron2's PASCAL VOC) are converted first."""
    from detectron2.structures import BoxMode

    img = tmp_path / "a.png"
    img.write_bytes(b"")
    dicts = [{"file_name": str(img), "height": 100, "width": 120, "image_id": "2007_000001",
              "annotations": [{"bbox": [10.0, 20.0, 50.0, 70.0], "bbox_mode": BoxMode.XYXY_ABS,
                               "category_id": c} for c in (0, 1, 2, 0)]}]
    DatasetCatalog.register("toy_voc_like_train", lambda: dicts)
    MetadataCatalog.get("toy_voc_like_train").set(thing_classes=["a", "b", "c"],
                                                  evaluator_type="pascal_voc")
    name = register_noisy_dataset("toy_voc_like_train", 0.5, 0.2, seed=1, root=str(tmp_path))
    out = DatasetCatalog.get(name)
    anns = out[0]["annotations"]
    assert len(anns) == 4 and out[0]["file_name"] == str(img)
    assert sum(a["category_id"] != a["clean_category_id"] for a in anns) == 2
    assert all(a["clean_bbox"] == [10.0, 20.0, 40.0, 50.0] for a in anns)
    assert MetadataCatalog.get(name).thing_classes == ["a", "b", "c"]


@pytest.mark.parametrize("path", sorted(
    os.path.join(d, f)
    for d in ("configs/LT-Shapes", "configs/PascalVOC-Noisy", "configs/COCO-Noisy")
    if os.path.isdir(os.path.join(REPO, d)) for f in os.listdir(os.path.join(REPO, d))
    if f.endswith(".yaml") and (f.startswith("noisy_") or "Noisy" in d)))
def test_noisy_configs_parse(path):
    from detectron2.config import get_cfg

    from det_ext.config import add_det_ext_config

    cfg = get_cfg()
    add_det_ext_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, path))
    assert cfg.MODEL.MASK_ON is False and cfg.DET_EXT.TRAINER == "NoisyTrainer"
    assert all("_noisy_l" in n for n in cfg.DATASETS.TRAIN) or "clean" in path
    if "dual_head" in path or "box_correction" in path:
        assert cfg.MODEL.ROI_HEADS.NAME == "DualHeadROIHeads"
        assert cfg.MODEL.META_ARCHITECTURE == "NoisyGeneralizedRCNN"
