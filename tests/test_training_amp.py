# Copyright (c) det_ext authors.
"""Mixed-precision detector training (SOLVER.AMP) on a CPU: bfloat16 autocast of the training
forward, float32 weights and evaluation, config errors, and the CUDA branch's precision."""
import os
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_model_opts
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import EventStorage

from det_ext.engine import DetExtTrainer, build_config
from det_ext.engine.amp import autocast_training_forward, enable_amp
from det_ext.utils.errors import ConfigInputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "configs", "LT-Shapes", "mask_rcnn_R18_FPN_tiny.yaml")
AMP_OPTS = ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "bfloat16"]


def _record_dtypes(module: torch.nn.Module) -> list:
    seen: list = []
    module.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    return seen


def _losses(model: torch.nn.Module, batch: list) -> dict:
    torch.manual_seed(0)  # the RPN and ROI heads sample proposals at random
    with EventStorage(0):
        return {k: float(v) for k, v in model(batch).items()}


def test_autocast_training_forward_matches_float32_and_leaves_eval_alone(tiny_world, tmp_path):
    trainer = DetExtTrainer(build_config(TINY_CONFIG, tiny_model_opts(str(tmp_path))))
    model = trainer.model
    batch = next(trainer._trainer._data_loader_iter)
    conv_out = _record_dtypes(model.backbone.bottom_up.stem.conv1)
    model.train()
    reference = _losses(model, batch)
    handles = autocast_training_forward(model, torch.bfloat16, "cpu")
    mixed = _losses(model, batch)
    assert conv_out == [torch.float32, torch.bfloat16]
    assert set(mixed) == set(reference)
    total_ref, total_mixed = sum(reference.values()), sum(mixed.values())
    assert total_mixed == pytest.approx(total_ref, rel=0.05)
    assert all(p.dtype == torch.float32 for p in model.parameters())

    model.eval()  # inference stays float32, as Detectron2's AMPTrainer leaves it
    with torch.no_grad():
        model([{"image": batch[0]["image"]}])
    assert conv_out[-1] == torch.float32

    for handle in handles:
        handle.remove()
    model.train()
    _losses(model, batch)
    assert conv_out[-1] == torch.float32
    assert not torch.is_autocast_enabled("cpu")


def test_autocast_is_left_when_the_forward_raises():
    class Failing(torch.nn.Module):
        def forward(self, x):
            assert torch.is_autocast_enabled("cpu")
            raise RuntimeError("boom")

    model = Failing().train()
    autocast_training_forward(model, torch.bfloat16, "cpu")
    with pytest.raises(RuntimeError, match="boom"):
        model(torch.zeros(1))
    assert not torch.is_autocast_enabled("cpu")


def test_cpu_amp_training_trains_resumes_and_evaluates_in_float32(tiny_world, tmp_path):
    cfg = build_config(TINY_CONFIG, tiny_model_opts(str(tmp_path), max_iter=2) + AMP_OPTS)
    trainer = DetExtTrainer(cfg)
    assert type(trainer._trainer) is SimpleTrainer  # Detectron2's AMPTrainer needs CUDA
    assert trainer.cfg.SOLVER.AMP.ENABLED and trainer.cfg.SOLVER.AMP.DTYPE == "bfloat16"
    conv_out = _record_dtypes(trainer.model.backbone.bottom_up.stem.conv1)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    assert torch.bfloat16 in conv_out  # training steps
    assert conv_out[-1] == torch.float32  # the final evaluation
    assert results["bbox"]["AP"] >= 0
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())

    longer = build_config(TINY_CONFIG, tiny_model_opts(str(tmp_path), max_iter=3) + AMP_OPTS)
    resumed = DetExtTrainer(longer)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    resumed.train()
    assert os.path.isfile(tmp_path / "model_final.pth")


@pytest.mark.parametrize("dtype,message", [
    ("float16", "float16 mixed precision needs CUDA"),
    ("half", "'half' is not one of"),
])
def test_amp_dtype_errors_name_the_key(tiny_world, tmp_path, dtype, message):
    cfg = build_config(TINY_CONFIG, tiny_model_opts(str(tmp_path)) + [
        "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", dtype])
    with pytest.raises(ConfigInputError, match="SOLVER.AMP.DTYPE") as err:
        DetExtTrainer(cfg)
    assert message in str(err.value)


def test_cuda_amp_keeps_detectron2_trainer_at_the_configured_precision(tiny_world, tmp_path):
    cfg = build_config(TINY_CONFIG, tiny_model_opts(str(tmp_path)) + AMP_OPTS + [
        "MODEL.DEVICE", "cuda"])
    inner = SimpleNamespace(precision=torch.float16, model=torch.nn.Linear(1, 1))
    trainer = SimpleNamespace(_trainer=inner, cfg=cfg)
    enable_amp(trainer, cfg)
    assert inner.precision == torch.bfloat16
    assert not inner.model._forward_pre_hooks  # CUDA autocast is the AMPTrainer's own
