# Copyright (c) det_ext authors.
"""Generalized base/novel evaluation, open-vocabulary splits and their registration."""
import json

import pytest
from conftest import TINY_SPEC
from detectron2.data import DatasetCatalog, MetadataCatalog

from det_ext.data.lt_shapes.vocabulary import build_categories
from det_ext.data.open_vocab import (COCO_OV_BASE, COCO_OV_NOVEL, LT_SHAPES_NOVEL,
                                     register_lt_shapes_ov, write_ov_split_json)
from det_ext.engine.open_vocab_eval import split_ap
from det_ext.utils.errors import DatasetFormatError


def _gt():
    def ann(i, img, cat, box):
        return {"id": i, "image_id": img, "category_id": cat, "bbox": box,
                "area": box[2] * box[3], "iscrowd": 0}
    return {
        "images": [{"id": 1, "height": 100, "width": 100, "file_name": "1.png",
                    "neg_category_ids": [2], "not_exhaustive_category_ids": []},
                   {"id": 2, "height": 100, "width": 100, "file_name": "2.png",
                    "neg_category_ids": [1], "not_exhaustive_category_ids": []}],
        "annotations": [ann(1, 1, 1, [0, 0, 10, 10]), ann(2, 1, 3, [20, 20, 10, 10]),
                        ann(3, 2, 2, [0, 0, 10, 10]), ann(4, 2, 3, [20, 20, 10, 10])],
        "categories": [{"id": 1, "name": "a", "frequency": "f"},
                       {"id": 2, "name": "b", "frequency": "c"},
                       {"id": 3, "name": "n", "frequency": "r"}],
    }


def _dt():
    def det(img, cat, box, s):
        return {"image_id": img, "category_id": cat, "bbox": box, "score": s}
    return [det(1, 1, [0, 0, 10, 10], 0.9),
            det(1, 2, [0, 0, 10, 10], 0.9), det(2, 2, [0, 0, 10, 10], 0.8),
            det(1, 3, [20, 20, 10, 10], 0.9), det(1, 3, [50, 50, 5, 5], 0.8),
            det(2, 3, [20, 20, 10, 10], 0.7)]


@pytest.mark.parametrize("style", ["lvis", "coco"])
def test_generalized_split_ap_hand_built(style):
    r = split_ap(_gt(), _dt(), novel_ids=[3], style=style, max_dets=100)
    # a: one TP -> 1; b: FP (0.9) then TP (0.8) -> interpolated precision 0.5 everywhere;
    # n: TP, FP, TP -> precision 1 up to recall 0.5 (51 of 101 points), 2/3 after (50 points)
    ap_n = (51 + 50 * 2 / 3) / 101
    assert r["novel_AP50"] == pytest.approx(ap_n)
    assert r["base_AP50"] == pytest.approx(0.75)
    assert r["all_AP50"] == pytest.approx((1 + 0.5 + ap_n) / 3)
    assert r["novel_AP"] == pytest.approx(ap_n)  # boxes are exact: every IoU threshold alike
    with pytest.raises(ValueError, match=r"novel category ids \[9\]"):
        split_ap(_gt(), _dt(), novel_ids=[9], style=style)


def test_no_novel_detections_gives_zero_novel_ap():
    dt = [d for d in _dt() if d["category_id"] != 3]
    r = split_ap(_gt(), dt, novel_ids=[3])
    assert r["novel_AP50"] == 0.0 and r["base_AP50"] == pytest.approx(0.75)


def test_lt_shapes_ov_split_removes_novel_boxes(tiny_world):
    names = [c.name for c in build_categories(TINY_SPEC.num_categories, TINY_SPEC.num_twins)]
    novel = (names[2], names[6])
    ov = register_lt_shapes_ov(TINY_SPEC, prefix="lt_shapes_tiny_split_test", novel=novel)
    base_meta = MetadataCatalog.get(ov["base_train"])
    assert base_meta.thing_classes == [n for n in names if n not in novel]
    full = DatasetCatalog.get(tiny_world["train"])
    base = DatasetCatalog.get(ov["base_train"])
    assert [d["image_id"] for d in base] == [d["image_id"] for d in full]  # images stay
    n_novel = 0
    for d_full, d_base in zip(full, base):
        kept = [a for a in d_full["annotations"] if names[a["category_id"]] not in novel]
        n_novel += len(d_full["annotations"]) - len(kept)
        assert [base_meta.thing_classes[a["category_id"]] for a in d_base["annotations"]] == \
            [names[a["category_id"]] for a in kept]
        assert [a["bbox"] for a in d_base["annotations"]] == [a["bbox"] for a in kept]
    assert n_novel > 0
    val_meta = MetadataCatalog.get(ov["val"])
    assert val_meta.novel_category_ids == [3, 7] and val_meta.thing_classes == names
    assert len(DatasetCatalog.get(ov["val"])) == TINY_SPEC.num_val_images
    with pytest.raises(DatasetFormatError, match=r"\['purple unicorn'\]"):
        register_lt_shapes_ov(TINY_SPEC, prefix="lt_shapes_tiny_bad", novel=["purple unicorn"])


def test_default_splits_are_fixed():
    default = [c.name for c in build_categories(30, 8)]
    assert len(LT_SHAPES_NOVEL) == 6 and set(LT_SHAPES_NOVEL) <= set(default)
    assert len(COCO_OV_BASE) == 48 and len(COCO_OV_NOVEL) == 17
    assert not set(COCO_OV_BASE) & set(COCO_OV_NOVEL)
    assert MetadataCatalog.get("lt_shapes_ov_val").novel_category_ids == [4, 8, 9, 12, 15, 20]


def test_write_ov_split_json(tmp_path):
    src = tmp_path / "src.json"
    gt = _gt()
    gt["categories"].append({"id": 4, "name": "dropped"})
    gt["images"][0]["neg_category_ids"] = [2, 4]
    src.write_text(json.dumps(gt))
    out = write_ov_split_json(str(src), str(tmp_path / "out.json"), ["a", "b", "n"], ["n"])
    data = json.load(open(out))
    assert [c["name"] for c in data["categories"]] == ["a", "b", "n"]
    assert [c["split"] for c in data["categories"]] == ["seen", "seen", "unseen"]
    assert data["images"][0]["neg_category_ids"] == [2]
    base = write_ov_split_json(str(src), str(tmp_path / "base.json"), ["a", "b"])
    data = json.load(open(base))
    assert {a["category_id"] for a in data["annotations"]} == {1, 2}
    assert len(data["images"]) == 2
    with pytest.raises(DatasetFormatError, match="'zebra'"):
        write_ov_split_json(str(src), str(tmp_path / "x.json"), ["zebra"])


@pytest.mark.parametrize("path", [
    "configs/LT-Shapes/ov_base_only_R18_FPN_tiny.yaml",
    "configs/LT-Shapes/ov_pseudo_only_R18_FPN_tiny.yaml",
    "configs/LT-Shapes/ov_pseudo_then_base_R18_FPN_tiny.yaml",
    "configs/LT-Shapes/ov_pseudo_then_base_gt_only_R18_FPN_tiny.yaml",
    "configs/COCO-OV/pretrain_pseudo_R50_FPN.yaml",
    "configs/COCO-OV/finetune_base_R50_FPN.yaml",
    "configs/COCO-OV/base_only_R50_FPN.yaml",
    "configs/LVIS-OV/base_only_R50_FPN_1x.yaml",
    "configs/LVIS-OV/pseudo_then_base_R50_FPN_1x.yaml",
])
def test_recipe_configs_are_consistent(path):
    import os

    from detectron2.config import get_cfg

    from det_ext.config import add_det_ext_config

    cfg = get_cfg()
    add_det_ext_config(cfg)
    cfg.merge_from_file(os.path.join(os.path.dirname(__file__), "..", path))
    assert cfg.MODEL.ROI_HEADS.NAME == "OpenVocabROIHeads"
    assert cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG
    assert cfg.DET_EXT.TRAINER == "OpenVocabTrainer"
    train, test = cfg.DATASETS.TRAIN[0], cfg.DATASETS.TEST[0]
    assert train in DatasetCatalog.list() and test in DatasetCatalog.list()
    if train.startswith("lt_shapes_ov_base"):
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == len(MetadataCatalog.get(train).thing_classes)
    expected = {"coco_ov_base_train": 48, "lvis_v1_ov_base_train": 866}
    if train in expected:
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == expected[train]
