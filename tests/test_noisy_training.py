# Copyright (c) det_ext authors.
"""Dual-head training with on-the-fly correction on a tiny noisy LT-Shapes world, the gradient
paths of the two heads, test-time averaging, and whole-dataset correction."""
import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from conftest import tiny_model_opts
from det_ext.data.datasets import load_lvis_format_json
from det_ext.engine import build_config
from det_ext.modeling.noisy import DualHeadROIHeads, NoisyTrainer
from det_ext.modeling.noisy.correct_dataset import correct_dataset
from det_ext.utils.errors import DetExtInputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = os.path.join(REPO, "configs", "LT-Shapes", "noisy_dual_head_R18_FPN_tiny.yaml")
VANILLA_CFG = os.path.join(REPO, "configs", "LT-Shapes", "noisy_vanilla_R18_FPN_tiny.yaml")
NOISY_TRAIN = "lt_shapes_tiny_train_noisy_l40_b40"


def _opts(out, max_iter=3, *extra):
    return tiny_model_opts(str(out), max_iter) + ["DATASETS.TRAIN", f"('{NOISY_TRAIN}',)",
                                                  "DATASETS.TEST", "()", *extra]


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("noisy_dual")
    cfg = build_config(CFG, _opts(out, 3, "NOISY.WARMUP_ITERS", "1"))
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    trainer = NoisyTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return cfg, trainer.model


def test_training_logs_correction_statistics(trained):
    cfg, model = trained
    assert isinstance(model.roi_heads, DualHeadROIHeads)
    with open(os.path.join(cfg.OUTPUT_DIR, "training_metrics.json")) as f:
        records = [json.loads(line) for line in f]
    last = records[-1]
    for key in ("loss_cls", "loss_cls_h2", "loss_box_reg", "loss_box_reg_h2", "noisy/iou_noisy",
                "noisy/iou_corrected", "noisy/label_acc_noisy", "noisy/label_acc_corrected"):
        assert key in last, key
    assert 0.0 < last["noisy/iou_noisy"] < 1.0
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))


def _batch(n_images=2, size=64):
    torch.manual_seed(0)
    inputs = []
    for i in range(n_images):
        inst = Instances((size, size), gt_boxes=Boxes(torch.tensor([[8.0, 10.0, 30.0, 34.0],
                                                                    [30.0, 28.0, 56.0, 50.0]])),
                         gt_classes=torch.tensor([1, 3]))
        inputs.append({"image": torch.randint(0, 255, (3, size, size)).float(), "height": size,
                       "width": size, "instances": inst})
    return inputs


def _build(out, *extra):
    cfg = build_config(CFG, _opts(out, 3, *extra))
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    return model


def test_each_head_gets_only_its_own_loss_gradient(tiny_world, tmp_path):
    model = _build(tmp_path, "NOISY.WARMUP_ITERS", "0")
    with EventStorage(start_iter=5):
        losses = model(_batch())
    heads = model.roi_heads
    head1 = list(heads.box_head.parameters()) + list(heads.box_predictor.parameters())
    head2 = list(heads.box_head2.parameters()) + list(heads.box_predictor2.parameters())
    losses["loss_cls_h2"].backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in head1)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head2)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    model.zero_grad(set_to_none=True)
    losses["loss_cls"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in head2)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head1)


def test_correction_step_leaves_parameters_and_features_untouched(tiny_world, tmp_path):
    model = _build(tmp_path)
    inputs = _batch()
    images = model.preprocess_image(inputs)
    features = model.backbone(images.tensor)
    targets = [x["instances"] for x in inputs]
    corrected, _ = model.roi_heads.correct(features, targets, model.proposal_generator)
    assert all(p.grad is None for p in model.parameters())
    for c, t in zip(corrected, targets):
        assert not c.gt_boxes.tensor.requires_grad and not c.gt_soft_classes.requires_grad
        assert c.gt_soft_classes.shape == (2, 8)
        torch.testing.assert_close(c.gt_soft_classes.sum(1), torch.ones(2))
        torch.testing.assert_close(c.gt_noisy_boxes.tensor, t.gt_boxes.tensor)
        assert (c.gt_boxes.tensor[:, 2:] > c.gt_boxes.tensor[:, :2]).all()
        assert (c.gt_boxes.tensor >= 0).all() and (c.gt_boxes.tensor <= 64).all()


def test_rpn_objectness_and_independent_sampling_train(tiny_world, tmp_path):
    model = _build(tmp_path, "NOISY.WARMUP_ITERS", "0", "NOISY.BOX_CORRECTION.OBJECTNESS", "rpn",
                   "NOISY.INDEPENDENT_SAMPLING", "True", "NOISY.BOX_CORRECTION.STEPS", "2")
    with EventStorage(start_iter=0):
        losses = model(_batch())
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


@pytest.mark.parametrize("mode", ["mean", "head1"])
def test_inference_outputs(trained, mode):
    cfg, model = trained
    model.eval()
    model.roi_heads.test_output = mode
    image = DatasetCatalog.get("lt_shapes_tiny_val")[0]
    import cv2

    img = torch.as_tensor(cv2.imread(image["file_name"]).transpose(2, 0, 1).copy()).float()
    with torch.no_grad():
        out = model([{"image": img, "height": 64, "width": 64}])[0]["instances"]
    assert out.pred_boxes.tensor.shape[1] == 4 and len(out) == len(out.scores)
    assert (out.scores <= 1.0).all()
    model.roi_heads.test_output = "mean"


def test_correct_dataset_writes_a_loadable_cleaned_json(trained, tmp_path):
    cfg, model = trained
    corrected, report = correct_dataset(cfg, model, NOISY_TRAIN, batch_size=4)
    n = sum(len(d["annotations"]) for d in DatasetCatalog.get(NOISY_TRAIN))
    assert report["num_annotations"] == n
    assert 0 <= report["labels_changed"] <= n and 0 <= report["boxes_changed"] <= n
    assert 0.3 < report["noisy_mean_iou"] < 0.65
    assert report["noisy_label_accuracy"] == pytest.approx(0.6, abs=0.02)
    for key in ("corrected_mean_iou", "corrected_label_accuracy"):
        assert 0.0 <= report[key] <= 1.0
    anns = corrected["annotations"]
    assert all("noisy_bbox" in a and "clean_id" in a for a in anns)
    path = tmp_path / "cleaned.json"
    path.write_text(json.dumps(corrected))
    meta_root = os.path.dirname(DatasetCatalog.get(NOISY_TRAIN)[0]["file_name"])
    dicts = load_lvis_format_json(str(path), meta_root.rsplit("images", 1)[0])
    assert sum(len(d["annotations"]) for d in dicts) == n


def test_correct_dataset_rejects_a_single_head_model(tiny_world, tmp_path):
    cfg = build_config(VANILLA_CFG, _opts(tmp_path))
    with pytest.raises(DetExtInputError, match="DualHeadROIHeads"):
        correct_dataset(cfg, build_model(cfg), NOISY_TRAIN)


def test_correct_annotations_cli(trained, tmp_path, datasets_root):
    cfg, model = trained
    weights = tmp_path / "model.pth"
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    env = {**os.environ, "DETECTRON2_DATASETS": datasets_root, "PYTHONWARNINGS": "ignore"}
    # The tiny world is registered by the test session only: pass it as a JSON file.
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(NOISY_TRAIN)
    cmd = [sys.executable, os.path.join(REPO, "tools/correct_annotations.py"), "--config-file",
           CFG, "--weights", str(weights), "--json", meta.json_file, "--image-root",
           meta.image_root, "--output", str(tmp_path / "out.json"), *_opts(tmp_path)[:-4],
           "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((tmp_path / "out_report.json").read_text())
    assert report["num_annotations"] > 0 and "corrected_mean_iou" in report
    bad = subprocess.run(cmd[:5] + [str(tmp_path / "missing.pth")] + cmd[6:], capture_output=True,
                         text=True, env=env, cwd=REPO)
    assert bad.returncode == 2 and "weight file not found" in bad.stderr


def test_corrected_heads_option_trains_the_other_head_on_noisy_boxes(tiny_world, tmp_path):
    model = _build(tmp_path, "NOISY.WARMUP_ITERS", "0", "NOISY.CORRECTED_HEADS", "['head1']")
    heads = model.roi_heads
    seen = []
    original = heads.label_and_sample_proposals

    def record(proposals, targets):
        seen.append(torch.cat([t.gt_boxes.tensor for t in targets]))
        return original(proposals, targets)

    heads.label_and_sample_proposals = record
    inputs = _batch()
    noisy = torch.cat([x["instances"].gt_boxes.tensor for x in inputs])
    with EventStorage(start_iter=0):
        model(inputs)
    assert len(seen) == 2
    assert not torch.allclose(seen[0], noisy)  # head 1: corrected boxes
    torch.testing.assert_close(seen[1], noisy)  # head 2: the noisy annotations
    with pytest.raises(ValueError, match="CORRECTED_HEADS"):
        _build(tmp_path, "NOISY.CORRECTED_HEADS", "['head3']")
