# Copyright (c) det_ext authors.
"""SimCal dual-head rule: hand-computed scores, thresholds and low-shot sets from metadata."""
import json
from collections import Counter

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog

from det_ext.data import prepare_datasets
from det_ext.data.coco_lt import REFERENCE_COCO_LT_COUNTS
from det_ext.modeling.simcal import combine_scores, low_shot_classes, resolve_dual_threshold


def test_dual_rule_hand_computed():
    # C = 3 classes, background is the last column (Detectron2 order)
    p = torch.tensor([[0.50, 0.20, 0.10, 0.20],
                      [0.05, 0.05, 0.10, 0.80]])
    q = torch.tensor([[0.10, 0.60, 0.20, 0.10],
                      [0.30, 0.40, 0.25, 0.05]])
    low = torch.tensor([False, True, False])
    s = combine_scores(p, q, low, "dual")
    expected = torch.tensor([[0.50, 0.60, 0.10, 0.20],
                             [0.05, 0.40, 0.10, 0.80]])
    assert torch.equal(s, expected)
    assert s[0].sum() == pytest.approx(1.4)  # no renormalisation, as the reference
    assert torch.equal(combine_scores(p, q, low, "calibrated"), q)
    assert torch.equal(combine_scores(p, q, low, "original"), p)
    # background column never taken from the calibrated head, even if every class is low-shot
    all_low = combine_scores(p, q, torch.ones(3, dtype=torch.bool), "dual")
    assert torch.equal(all_low[:, 3], p[:, 3]) and torch.equal(all_low[:, :3], q[:, :3])
    with pytest.raises(ValueError):
        combine_scores(p, q, torch.ones(2, dtype=torch.bool), "dual")
    with pytest.raises(ValueError):
        combine_scores(p, q, low, "average")


def test_default_thresholds_per_dataset():
    counts = np.array([5, 50, 150, 2000])
    freq = ["r", "c", "f", "f"]
    assert resolve_dual_threshold(-1, ["lvis_v0.5_train"], counts, freq) == 100
    assert resolve_dual_threshold(-1, ["lvis_v1_train"], counts, freq) == 100
    assert resolve_dual_threshold(-1, ("coco_lt_train",), counts, freq) == 400
    assert resolve_dual_threshold(-1, ["lt_shapes_train"], counts, freq) == 150
    assert resolve_dual_threshold(-1, ["x"], counts, ["r", "c", "c", "c"]) == 2001
    assert resolve_dual_threshold(37, ["lvis_v1_train"], counts, freq) == 37


def test_coco_lt_reference_low_shot_set_matches_spec():
    counts = np.array(REFERENCE_COCO_LT_COUNTS)
    assert counts.sum() == 666493
    t = resolve_dual_threshold(-1, ["coco_lt_train"], counts, ["f"] * 80)
    labels = [i + 1 for i in np.flatnonzero(counts < t)]  # mmdet labels 1..80
    assert labels == [6, 11, 12, 13, 16, 17, 21, 22, 24, 30, 32, 35, 36, 53, 54, 60, 62, 64, 65,
                      67, 69, 70, 71, 72, 73, 77, 79, 80]
    edges = [1, 20, 400, 8000, np.inf]
    bins = [int(((counts >= lo) & (counts < hi)).sum()) for lo, hi in zip(edges, edges[1:])]
    assert bins == [4, 24, 32, 20]


def test_low_shot_set_from_tiny_world_metadata(tiny_world):
    prepare_datasets([tiny_world["train"]])  # generated lazily
    meta = MetadataCatalog.get(tiny_world["train"])
    with open(meta.json_file) as f:
        data = json.load(f)
    cats = sorted(data["categories"], key=lambda c: c["id"])
    inst = Counter(a["category_id"] for a in data["annotations"])
    imgs = Counter((a["category_id"], a["image_id"]) for a in data["annotations"])
    img_count = Counter(c for c, _ in imgs)
    counts = np.array([inst[c["id"]] for c in cats])
    t_auto = min(inst[c["id"]] for c in cats if img_count[c["id"]] > 100) if any(
        img_count[c["id"]] > 100 for c in cats) else counts.max() + 1
    mask = low_shot_classes([tiny_world["train"]], -1, "instance_count")
    assert mask.tolist() == (counts < t_auto).tolist()
    mask = low_shot_classes([tiny_world["train"]], 10, "instance_count")
    assert mask.tolist() == (counts < 10).tolist()
    mask = low_shot_classes([tiny_world["train"]], 5, "image_count")
    assert mask.tolist() == [img_count[c["id"]] < 5 for c in cats]


@pytest.mark.parametrize("path,threshold,agnostic", [
    ("LVISv0.5/simcal_mask_rcnn_R_50_FPN_1x.yaml", 100, False),
    ("LVISv0.5/simcal_mask_rcnn_R_50_FPN_1x_agnostic.yaml", 100, True),
    ("LVISv1/simcal_mask_rcnn_R_50_FPN_1x.yaml", 100, False),
    ("LVISv1/simcal_mask_rcnn_R_50_FPN_1x_agnostic.yaml", 100, True),
    ("COCO-LT/simcal_mask_rcnn_R_50_FPN_1x.yaml", 400, False),
    ("COCO-LT/simcal_mask_rcnn_R_50_FPN_1x_agnostic.yaml", 400, True),
    ("LT-Shapes/simcal_R18_FPN_tiny_agnostic.yaml", -1, True),
])
def test_simcal_configs_keep_the_reference_schedule(path, threshold, agnostic):
    import os

    from detectron2.config import get_cfg

    from det_ext.config import add_det_ext_config

    cfg = get_cfg()
    add_det_ext_config(cfg)
    cfg.merge_from_file(os.path.join(os.path.dirname(__file__), "..", "configs", path))
    assert cfg.DET_EXT.TRAINER == "SimCalTrainer" and cfg.MODEL.META_ARCHITECTURE == "SimCalRCNN"
    assert cfg.MODEL.ROI_HEADS.NAME == "SimCalROIHeads" and cfg.SIMCAL.HEAD == "3fc_ft"
    assert cfg.SIMCAL.DUAL_THRESHOLD == threshold
    assert cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG == agnostic
    assert cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK == agnostic
    s = cfg.SIMCAL.SOLVER
    assert (s.BASE_LR, s.MOMENTUM, s.WEIGHT_DECAY) == (0.01, 0.0, 0.0)
    assert (cfg.SIMCAL.IMS_PER_BATCH, cfg.SIMCAL.CLASSES_PER_BATCH) == (16, 16)
    if "LT-Shapes" not in path:  # the paper schedule; LT-Shapes uses the documented CPU one
        assert (s.MAX_ITER, tuple(s.STEPS)) == (12000, (7000, 10000))
        assert cfg.SIMCAL.ROI_BATCH_SIZE_PER_IMAGE == 512
