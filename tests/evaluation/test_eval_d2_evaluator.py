# Copyright (c) det_ext authors.
"""The Detectron2 evaluator: conversion of model outputs, metrics in percent, outputs, gather."""
import json
import math
import os
import tempfile

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Boxes, Instances
from evalhelpers import random_problem, run_lvis_api

from det_ext.evaluation import LVISStyleEvaluator

H, W = 120, 160


def _outputs(dets, gt, with_masks, seed=0):
    """Model-style outputs per image (contiguous classes = sorted category index)."""
    cat_ids = sorted(c["id"] for c in gt["categories"])
    by_img = {im["id"]: [] for im in gt["images"]}
    for d in dets:
        by_img[d["image_id"]].append(d)
    inputs, outputs = [], []
    for img_id, ds in by_img.items():
        inst = Instances((H, W))
        xyxy = [[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2],
                 d["bbox"][1] + d["bbox"][3]] for d in ds]
        inst.pred_boxes = Boxes(torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.tensor([d["score"] for d in ds], dtype=torch.float32)
        inst.pred_classes = torch.tensor([cat_ids.index(d["category_id"]) for d in ds],
                                         dtype=torch.int64)
        if with_masks:
            masks = [mask_utils.decode(d["segmentation"]).astype(bool) for d in ds]
            inst.pred_masks = torch.from_numpy(np.stack(masks) if masks
                                               else np.zeros((0, H, W), dtype=bool))
        inputs.append({"image_id": img_id})
        outputs.append({"instances": inst})
    return inputs, outputs


def _register(name, gt, tmp, with_id_map):
    path = os.path.join(tmp, f"{name}.json")
    with open(path, "w") as f:
        json.dump(gt, f)
    meta = {"json_file": path, "evaluator_type": "lvis"}
    if with_id_map:
        ids = sorted(c["id"] for c in gt["categories"])
        meta["thing_dataset_id_to_contiguous_id"] = {cid: i for i, cid in enumerate(ids)}
    MetadataCatalog.get(name).set(**meta)


def _reference(gt, inputs, outputs, task, id_map):
    """What Detectron2's LVISEvaluator would feed to the LVIS API."""
    results = []
    for inp, out in zip(inputs, outputs):
        results += instances_to_coco_json(out["instances"], inp["image_id"])
    for r in results:
        r["category_id"] = id_map[r["category_id"]]
        if task == "segm":
            r.pop("bbox")
    return run_lvis_api(gt, results, task)[0]


@pytest.mark.parametrize("with_id_map", [True, False])
def test_evaluator_matches_lvis_api_on_detectron2_outputs(with_id_map):
    gt, dets = random_problem(21, num_images=6, dets_per_image=25, segm=True, size=(H, W))
    if not with_id_map:  # LVIS convention: category id = class index + 1
        remap = {c["id"]: i + 1 for i, c in enumerate(sorted(gt["categories"],
                                                               key=lambda c: c["id"]))}
        for c in gt["categories"]:
            c["id"] = remap[c["id"]]
        for a in gt["annotations"] + dets:
            a["category_id"] = remap[a["category_id"]]
        for im in gt["images"]:
            for key in ("neg_category_ids", "not_exhaustive_category_ids"):
                im[key] = [remap[c] for c in im[key]]
    inputs, outputs = _outputs(dets, gt, with_masks=True)
    name = f"det_ext_eval_test_{with_id_map}"
    with tempfile.TemporaryDirectory() as tmp:
        _register(name, gt, tmp, with_id_map)
        ev = LVISStyleEvaluator(name, output_dir=os.path.join(tmp, "out"))
        ev.reset()
        ev.process(inputs[:3], outputs[:3])
        ev.process(inputs[3:], outputs[3:])
        res = ev.evaluate()
        assert list(res) == ["bbox", "segm"]
        ids = sorted(c["id"] for c in gt["categories"])
        for task in ("bbox", "segm"):
            ref = _reference(gt, inputs, outputs, task, ids)
            for k, v in ref.items():
                expected = 100 * v if v >= 0 else math.nan
                assert res[task][k] == pytest.approx(expected, abs=1e-7, nan_ok=True), (task, k)
            assert {"AP1", "AP2", "AP3", "AP4"} <= set(res[task])
            with open(os.path.join(tmp, "out", f"lvis_style_results_{task}.json")) as f:
                saved = json.load(f)
            assert len(saved["per_category"]) == len(gt["categories"])
            assert saved["AP"] == pytest.approx(ref["AP"], abs=1e-12)
        with open(os.path.join(tmp, "out", "lvis_instances_results.json")) as f:
            assert len(json.load(f)) == len(dets)


def test_undefined_metrics_are_nan_and_tasks_can_be_given():
    gt, dets = random_problem(22, num_images=4, dets_per_image=10, size=(H, W))
    for c in gt["categories"]:
        c["frequency"] = "f"  # no rare/common category: APr, APc undefined
    inputs, outputs = _outputs(dets, gt, with_masks=False)
    with tempfile.TemporaryDirectory() as tmp:
        _register("det_ext_eval_test_nan", gt, tmp, True)
        ev = LVISStyleEvaluator("det_ext_eval_test_nan", tasks=("bbox",), distributed=False,
                                max_dets_per_image=5, instance_count_bins=[1, 20, 400, 8000])
        ev.reset()
        ev.process(inputs, outputs)
        res = ev.evaluate()
    assert list(res) == ["bbox"]
    assert math.isnan(res["bbox"]["APr"]) and math.isnan(res["bbox"]["APc"])
    assert 0 <= res["bbox"]["AP"] <= 100 and "AR@5" in res["bbox"]


def test_no_predictions_gives_empty_results():
    gt, _ = random_problem(23, num_images=2)
    with tempfile.TemporaryDirectory() as tmp:
        _register("det_ext_eval_test_empty", gt, tmp, True)
        ev = LVISStyleEvaluator("det_ext_eval_test_empty")
        ev.reset()
        assert ev.evaluate() == {}


def _worker(rank, world, init, name, meta, inputs, outputs, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    MetadataCatalog.get(name).set(**meta)
    ev = LVISStyleEvaluator(name, tasks=("bbox",))
    ev.reset()
    ev.process(inputs[rank::world], outputs[rank::world])
    res = ev.evaluate()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)
    dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_gather_returns_the_same_metrics_on_every_rank():
    gt, dets = random_problem(24, num_images=6, dets_per_image=20, size=(H, W))
    inputs, outputs = _outputs(dets, gt, with_masks=False)
    with tempfile.TemporaryDirectory() as tmp:
        _register("det_ext_eval_test_dist", gt, tmp, True)
        meta = MetadataCatalog.get("det_ext_eval_test_dist").as_dict()
        meta.pop("name")
        init = f"file://{os.path.join(tmp, 'dist_init')}"
        torch.multiprocessing.spawn(_worker, nprocs=2, args=(
            2, init, "det_ext_eval_test_dist", meta, inputs, outputs, tmp))
        ranks = []
        for r in range(2):
            with open(os.path.join(tmp, f"rank{r}.json")) as f:
                ranks.append(json.load(f))
        single = LVISStyleEvaluator("det_ext_eval_test_dist", tasks=("bbox",),
                                    distributed=False)
        single.reset()
        single.process(inputs, outputs)
        expected = single.evaluate()
    assert ranks[0] == ranks[1]
    for k, v in expected["bbox"].items():
        assert ranks[0]["bbox"][k] == pytest.approx(v, abs=1e-9, nan_ok=True)
