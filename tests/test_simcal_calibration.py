# Copyright (c) det_ext authors.
"""SimCal calibration stage on the tiny world: frozen detector, head init, checkpoint round trip."""
import json
import os

import cv2
import numpy as np
import pytest
import torch
from conftest import tiny_model_opts
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser

from det_ext.data import get_class_statistics
from det_ext.engine import DetExtTrainer, build_config, train_net_main
from det_ext.engine.simcal_trainer import SimCalTrainer
from det_ext.modeling.simcal import SimCalRCNN

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_CFG = os.path.join(REPO, "configs", "LT-Shapes", "mask_rcnn_R18_FPN_tiny.yaml")
SIMCAL_CFG = os.path.join(REPO, "configs", "LT-Shapes", "simcal_R18_FPN_tiny.yaml")
AGNOSTIC = ["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True",
            "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "True"]
CALIB = "roi_heads.calibration_head."


def _train_baseline(out, extra=()):
    os.makedirs(out, exist_ok=True)
    cfg = build_config(BASE_CFG, tiny_model_opts(str(out), 3) + ["DATASETS.TEST", "()", *extra])
    trainer = DetExtTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return os.path.join(out, "model_final.pth")


def _simcal_opts(out, weights, iters=3, extra=()):
    return tiny_model_opts(str(out), iters) + [
        "DATASETS.TEST", "()", "MODEL.WEIGHTS", weights, "SIMCAL.IMS_PER_BATCH", "4",
        "SIMCAL.CLASSES_PER_BATCH", "4", "SIMCAL.SOLVER.MAX_ITER", str(iters),
        "SIMCAL.SOLVER.STEPS", "()", "SIMCAL.SOLVER.BASE_LR", "0.05", *extra]


@pytest.fixture(scope="module")
def baseline(tiny_world, tmp_path_factory):
    return _train_baseline(tmp_path_factory.mktemp("simcal_base"))


@pytest.fixture(scope="module")
def calibrated(baseline, tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("simcal_cal")
    os.makedirs(out, exist_ok=True)
    counts = get_class_statistics(tiny_world["train"]).instance_counts
    threshold = int(np.median(counts))  # splits the tiny world's classes into two groups
    cfg = build_config(SIMCAL_CFG, _simcal_opts(out, baseline,
                                                extra=["SIMCAL.DUAL_THRESHOLD", str(threshold)]))
    trainer = SimCalTrainer(cfg)
    trainer.resume_or_load(resume=False)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    return {"cfg": cfg, "trainer": trainer, "initial": initial, "out": str(out)}


def _val_inputs(tiny_world, n=4):
    dicts = DatasetCatalog.get(tiny_world["val"])[:n]
    out = []
    for d in dicts:
        img = cv2.imread(d["file_name"])
        out.append({"image": torch.as_tensor(img.transpose(2, 0, 1).copy()),
                    "height": d["height"], "width": d["width"]})
    return out


def _predict(model, inputs, mode=None):
    if mode is not None:
        model.roi_heads.inference_mode = mode
    model.eval()
    with torch.no_grad():
        return [o["instances"] for o in model(inputs)]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert len(x) == len(y)
        assert torch.allclose(x.pred_boxes.tensor, y.pred_boxes.tensor)
        assert torch.allclose(x.scores, y.scores)
        assert torch.equal(x.pred_classes, y.pred_classes)
        assert torch.allclose(x.pred_masks.float(), y.pred_masks.float())


def test_3fc_ft_head_is_a_copy_of_the_loaded_box_head(calibrated, baseline):
    init = calibrated["initial"]
    base = torch.load(baseline, map_location="cpu", weights_only=False)["model"]
    for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
        assert torch.equal(init[CALIB + "trunk." + name], base["roi_heads.box_head." + name])
    assert torch.equal(init[CALIB + "cls_score.weight"],
                       base["roi_heads.box_predictor.cls_score.weight"])
    assert int(init[CALIB + "initialized"]) == 1


def test_only_the_calibration_head_changes(calibrated):
    init, model = calibrated["initial"], calibrated["trainer"].model
    after = model.state_dict()
    frozen = [k for k in init if not k.startswith(CALIB)]
    assert any("bn" in k or "norm" in k for k in frozen)  # batch-norm statistics included
    assert all(torch.equal(init[k], after[k]) for k in frozen)
    assert any(not torch.equal(init[k], after[k]) for k in init if k.startswith(CALIB + "cls"))
    assert all(p.requires_grad == n.startswith(CALIB) for n, p in model.named_parameters())
    with open(os.path.join(calibrated["out"], "training_metrics.json")) as f:
        lines = [json.loads(x) for x in f]
    assert any("total_loss" in x and "simcal/cls_accuracy" in x for x in lines)
    # fg:bg 1:1 per calibration step
    assert all(x["simcal/num_fg"] == x["simcal/num_bg"] for x in lines if "simcal/num_fg" in x)


def test_checkpoint_round_trip_holds_both_heads(calibrated, tiny_world):
    cfg, trainer = calibrated["cfg"], calibrated["trainer"]
    ckpt = os.path.join(calibrated["out"], "model_final.pth")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["model"]
    assert "roi_heads.box_predictor.cls_score.weight" in state
    assert CALIB + "cls_score.weight" in state and int(state[CALIB + "initialized"]) == 1
    model = SimCalTrainer.build_model(cfg)  # what --eval-only builds
    assert isinstance(model, SimCalRCNN)
    DetectionCheckpointer(model).load(ckpt)
    loaded = model.state_dict()
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, loaded[k]), k
    assert not model.initialize_calibration_head()  # never re-initialised from the box head
    inputs = _val_inputs(tiny_world)
    for mode in ("dual", "calibrated", "original"):
        _same(_predict(model, inputs, mode), _predict(trainer.model, inputs, mode))


def test_modes_against_plain_baseline(calibrated, baseline, tiny_world):
    cfg = calibrated["cfg"]
    inputs = _val_inputs(tiny_world)
    plain_cfg = build_config(BASE_CFG, tiny_model_opts("unused", 1) + ["DATASETS.TEST", "()"])
    plain = DetExtTrainer.build_model(plain_cfg)
    DetectionCheckpointer(plain).load(baseline)
    ref = _predict(plain, inputs)
    # a freshly initialised 3fc_ft head equals the original: all three modes give the baseline
    fresh = SimCalTrainer.build_model(cfg)
    DetectionCheckpointer(fresh).load(baseline)
    assert fresh.initialize_calibration_head()
    for mode in ("original", "dual", "calibrated"):
        _same(_predict(fresh, inputs, mode), ref)
    # after calibration "original" is still the baseline, "calibrated" is not
    model = calibrated["trainer"].model
    _same(_predict(model, inputs, "original"), ref)
    cal = _predict(model, inputs, "calibrated")
    assert any(len(a) != len(b) or not torch.allclose(a.scores, b.scores) for a, b in zip(cal, ref))
    # dual: without the per-image top-k (which couples classes), the detections of low-shot
    # classes are exactly the calibrated head's and those of the other classes the original's
    model.roi_heads.box_predictor.test_topk_per_image = -1
    try:
        low = model.roi_heads.low_shot
        assert 0 < int(low.sum()) < len(low)
        outs = {m: _predict(model, inputs, m) for m in ("dual", "calibrated", "original")}
    finally:
        model.roi_heads.box_predictor.test_topk_per_image = cfg.TEST.DETECTIONS_PER_IMAGE

    def dets(inst, want_low):
        sel = low[inst.pred_classes] == want_low
        rows = torch.cat([inst.pred_classes[sel, None].float(), inst.scores[sel, None],
                          inst.pred_boxes.tensor[sel]], dim=1)
        return torch.tensor(sorted(map(tuple, rows.tolist()))).reshape(-1, 6)

    n_low = 0
    for d, c, o in zip(outs["dual"], outs["calibrated"], outs["original"]):
        for want_low, src in ((True, c), (False, o)):
            got, ref_rows = dets(d, want_low), dets(src, want_low)
            assert got.shape == ref_rows.shape and torch.allclose(got, ref_rows, atol=1e-4)
        n_low += len(dets(d, True))
    assert n_low > 0


@pytest.mark.parametrize("head", ["2fc_rand", "3fc_rand"])
def test_random_heads_keep_their_random_init(head, baseline, tmp_path):
    cfg = build_config(SIMCAL_CFG, _simcal_opts(tmp_path, baseline, extra=["SIMCAL.HEAD", head]))
    model = SimCalTrainer.build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(CALIB)}
    DetectionCheckpointer(model).load(baseline)
    assert model.initialize_calibration_head()
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items() if "initialized" not in k)
    n_linear = sum(1 for k in after if k.startswith(CALIB) and k.endswith("weight"))
    assert n_linear == (2 if head == "2fc_rand" else 3)
    logits = model.roi_heads.calibration_head(torch.randn(5, 64, 7, 7))
    assert logits.shape == (5, 9)


def test_class_agnostic_heads_calibrate_and_evaluate_with_train_net(tiny_world, tmp_path):
    # tools/train_net.py's main, in-process (the tiny world is registered by the test session)
    base = _train_baseline(tmp_path / "base_ag", AGNOSTIC)
    out = tmp_path / "cal_ag"
    opts = _simcal_opts(out, base, iters=2, extra=AGNOSTIC)
    train_net_main(default_argument_parser().parse_args(["--config-file", SIMCAL_CFG, *opts]))
    ckpt = out / "model_final.pth"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["model"]
    assert state["roi_heads.box_predictor.bbox_pred.weight"].shape[0] == 4  # class-agnostic
    assert CALIB + "cls_score.weight" in state
    eval_opts = opts + ["DATASETS.TEST", f"('{tiny_world['val']}',)", "MODEL.WEIGHTS", str(ckpt),
                        "OUTPUT_DIR", str(tmp_path / "ev")]
    results = train_net_main(default_argument_parser().parse_args(
        ["--config-file", SIMCAL_CFG, "--eval-only", *eval_opts]))
    with open(tmp_path / "ev" / "metrics.json") as f:
        metrics = json.load(f)
    assert {"AP", "APr", "APc", "APf"} <= set(metrics["bbox"]) and "AP" in metrics["segm"]
    assert metrics["bbox"]["AP"] == pytest.approx(results["bbox"]["AP"])


def test_missing_baseline_weights_is_a_clear_error(tiny_world, tmp_path):
    from det_ext.utils.errors import ConfigInputError

    cfg = build_config(SIMCAL_CFG, _simcal_opts(tmp_path, ""))
    os.makedirs(tmp_path, exist_ok=True)
    trainer = SimCalTrainer(cfg)
    with pytest.raises(ConfigInputError, match="MODEL.WEIGHTS"):
        trainer.resume_or_load(resume=False)


def test_resume_restores_the_head_and_draws_new_steps(calibrated, baseline, tiny_world):
    out = calibrated["out"]
    done = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu",
                      weights_only=False)
    cfg = build_config(SIMCAL_CFG, _simcal_opts(out, baseline, iters=5))
    trainer = SimCalTrainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == done["iteration"] + 1
    assert trainer._trainer.data_loader.simcal_dataset.start_step == trainer.start_iter
    state = trainer.model.state_dict()
    for k, v in done["model"].items():
        assert torch.equal(state[k], v), k  # calibration head restored, not re-initialised
