# Copyright (c) det_ext authors.
"""Converter of PCL / MoPro / MoCo / ICCL / torchvision checkpoints into Detectron2 pickles."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from det_ext.config import add_det_ext_config
from det_ext.pretrain.convert import (
    CheckpointFormatError, convert_checkpoint, rename_torchvision_to_d2)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trunk(arch, seed, head="linear", num_classes=5):
    """State dict of a torchvision ResNet with the reference repositories' heads."""
    torch.manual_seed(seed)
    m = getattr(torchvision.models, arch)(weights=None)
    sd = {k: v for k, v in m.state_dict().items() if not k.startswith("fc.")}
    feat = m.fc.in_features
    if head == "linear":  # PCL v1 / MoCo v1: fc = Linear(feat, 128)
        sd.update({"fc.weight": torch.randn(128, feat), "fc.bias": torch.randn(128)})
    elif head == "mlp":  # PCL v2: fc.0 Linear, fc.1 ReLU, fc.2 Linear
        sd.update({"fc.0.weight": torch.randn(feat, feat), "fc.0.bias": torch.randn(feat),
                   "fc.2.weight": torch.randn(128, feat), "fc.2.bias": torch.randn(128)})
    elif head == "mopro":  # classifier + fc1/fc2
        sd.update({"classifier.weight": torch.randn(num_classes, feat),
                   "classifier.bias": torch.randn(num_classes),
                   "fc1.weight": torch.randn(feat, feat), "fc1.bias": torch.randn(feat),
                   "fc2.weight": torch.randn(128, feat), "fc2.bias": torch.randn(128)})
    return sd


def _moco_style(arch, head, extra, prefix="module."):
    """{'epoch', 'arch', 'state_dict', 'optimizer'} with encoder_q / encoder_k / queue ..."""
    q, k = _trunk(arch, 0, head), _trunk(arch, 1, head)
    sd = {f"{prefix}encoder_q.{n}": v for n, v in q.items()}
    sd.update({f"{prefix}encoder_k.{n}": v for n, v in k.items()})
    sd.update({f"{prefix}{n}": v for n, v in extra.items()})
    return {"epoch": 200, "arch": arch, "state_dict": sd,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.0, "params": [0]}]}}, q


def _load_pkl(path):
    with open(path, "rb") as f:
        return pickle.load(f)


PCL_EXTRA = {"queue": torch.randn(128, 32), "queue_ptr": torch.zeros(1, dtype=torch.long)}
MOPRO_EXTRA = dict(PCL_EXTRA, prototypes=torch.randn(5, 128))


@pytest.mark.parametrize("fmt,head,extra", [
    ("pcl", "linear", PCL_EXTRA), ("pcl", "mlp", PCL_EXTRA), ("mopro", "mopro", MOPRO_EXTRA),
    ("moco", "linear", PCL_EXTRA), ("auto", "mlp", PCL_EXTRA)])
def test_reference_layouts_r18(tmp_path, fmt, head, extra):
    blob, q = _moco_style("resnet18", head, extra)
    src, out = str(tmp_path / "ckpt.pth.tar"), str(tmp_path / "out.pkl")
    torch.save(blob, src)
    report = convert_checkpoint(src, out, fmt)
    assert report.complete and report.depth == 18 and report.prefix == "module.encoder_q."
    assert len(report.covered) == 120  # 20 convs + 20 BN x 5 entries for Detectron2 R18
    d = _load_pkl(out)
    assert set(d) == {"model", "__author__", "matching_heuristics"}
    assert d["matching_heuristics"] is True and d["__author__"] != "Caffe2"
    model = d["model"]
    assert all(isinstance(v, np.ndarray) for v in model.values())
    assert not any(k.startswith(("fc", "classifier", "queue", "prototypes")) or "fc1" in k
                   for k in model)
    # Values come from encoder_q (encoder_k was built with another seed).
    np.testing.assert_array_equal(model["res2.0.conv1.weight"], q["layer1.0.conv1.weight"].numpy())
    np.testing.assert_array_equal(model["res3.0.shortcut.norm.running_var"],
                                  q["layer2.0.downsample.1.running_var"].numpy())
    np.testing.assert_array_equal(model["stem.conv1.norm.weight"], q["bn1.weight"].numpy())
    assert "res5.1.conv2.norm.num_batches_tracked" in model


def test_pcl_v2_r50_bottleneck(tmp_path):
    blob, q = _moco_style("resnet50", "mlp", PCL_EXTRA)
    src, out = str(tmp_path / "PCL_v2_epoch200.pth.tar"), str(tmp_path / "pcl.pkl")
    torch.save(blob, src)
    report = convert_checkpoint(src, out, "pcl")
    assert report.complete and report.depth == 50 and len(report.covered) == 318
    model = _load_pkl(out)["model"]
    np.testing.assert_array_equal(model["res2.0.shortcut.norm.running_var"],
                                  q["layer1.0.downsample.1.running_var"].numpy())
    assert model["res5.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert sum(k.startswith("module.encoder_k") for k in report.dropped) == len(q)


def test_rename_rules():
    assert rename_torchvision_to_d2("layer1.0.downsample.1.running_var") == \
        "res2.0.shortcut.norm.running_var"
    assert rename_torchvision_to_d2("bn1.weight") == "stem.conv1.norm.weight"
    assert rename_torchvision_to_d2("conv1.weight") == "stem.conv1.weight"
    assert rename_torchvision_to_d2("layer4.2.bn3.bias") == "res5.2.conv3.norm.bias"
    assert rename_torchvision_to_d2("layer3.0.downsample.0.weight") == "res4.0.shortcut.weight"


@pytest.mark.parametrize("prefix", ["", "module.", "encoder_q."])
def test_torchvision_and_other_prefixes(tmp_path, prefix):
    sd = {prefix + k: v for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}
    src = str(tmp_path / "tv.pth")
    torch.save(sd, src)
    fmt = "torchvision" if prefix != "encoder_q." else "iccl"
    report = convert_checkpoint(src, str(tmp_path / "tv.pkl"), fmt)
    assert report.complete and report.prefix == prefix
    assert report.dropped == [prefix + "fc.weight", prefix + "fc.bias"]


def test_loads_into_detectron2_r18_fpn(tmp_path):
    blob, q = _moco_style("resnet18", "mopro", MOPRO_EXTRA)
    src, out = str(tmp_path / "mopro.tar"), str(tmp_path / "mopro.pkl")
    torch.save(blob, src)
    convert_checkpoint(src, out, "mopro")
    cfg = get_cfg()
    add_det_ext_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs/LT-Shapes/pretrained_R18_FPN_tiny.yaml"))
    model = build_model(cfg)
    DetectionCheckpointer(model).load(out)
    sd = model.state_dict()
    converted = _load_pkl(out)["model"]
    bottom_up = [k for k in sd if k.startswith("backbone.bottom_up.")]
    assert len(bottom_up) == 120
    for k in bottom_up:  # every backbone entry covered and replaced by the checkpoint's value
        name = k[len("backbone.bottom_up."):]
        torch.testing.assert_close(sd[k], torch.as_tensor(converted[name]))
    torch.testing.assert_close(sd["backbone.bottom_up.res4.0.shortcut.norm.running_mean"],
                               q["layer3.0.downsample.1.running_mean"])


def test_corrupted_file(tmp_path):
    blob, _ = _moco_style("resnet18", "linear", PCL_EXTRA)
    good = str(tmp_path / "good.pth.tar")
    torch.save(blob, good)
    bad = str(tmp_path / "bad.pth.tar")
    with open(good, "rb") as f, open(bad, "wb") as g:
        g.write(f.read()[:5000])  # truncated download
    with pytest.raises(CheckpointFormatError, match="bad.pth.tar: cannot be read"):
        convert_checkpoint(bad, str(tmp_path / "x.pkl"))
    junk = str(tmp_path / "junk.pth")
    with open(junk, "wb") as g:
        g.write(b"not a checkpoint at all")
    with pytest.raises(CheckpointFormatError, match="junk.pth"):
        convert_checkpoint(junk, str(tmp_path / "x.pkl"))
    assert not os.path.exists(tmp_path / "x.pkl")


def test_non_resnet_checkpoint(tmp_path):
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1,
                                              num_heads=2, hidden_dim=32, mlp_dim=64)
    src = str(tmp_path / "vit.pth")
    torch.save({"state_dict": {"module.encoder_q." + k: v for k, v in vit.state_dict().items()}},
               src)
    with pytest.raises(CheckpointFormatError, match="vit.pth: no ResNet backbone keys"):
        convert_checkpoint(src, str(tmp_path / "vit.pkl"))


def test_partial_and_mismatched(tmp_path):
    sd = torchvision.models.resnet18(weights=None).state_dict()
    del sd["layer3.0.bn2.running_var"]
    sd["layer2.1.conv1.weight"] = torch.zeros(128, 128, 1, 1)
    src, out = str(tmp_path / "partial.pth"), str(tmp_path / "partial.pkl")
    torch.save(sd, src)
    with pytest.raises(CheckpointFormatError) as e:
        convert_checkpoint(src, out, "torchvision")
    msg = str(e.value)
    assert "res4.0.conv2.norm.running_var" in msg and "res3.1.conv1.weight" in msg
    assert "--allow-partial" in msg and not os.path.exists(out)
    report = convert_checkpoint(src, out, "torchvision", allow_partial=True)
    assert report.missing == ["res4.0.conv2.norm.running_var"]
    assert len(report.mismatched) == 1 and os.path.exists(out)


def test_format_mismatch_is_an_error(tmp_path):
    src = str(tmp_path / "tv.pth")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), src)
    with pytest.raises(CheckpointFormatError, match="format 'pcl'"):
        convert_checkpoint(src, None, "pcl")


def test_cli(tmp_path):
    blob, _ = _moco_style("resnet18", "mlp", PCL_EXTRA)
    src, out = str(tmp_path / "c.pth.tar"), str(tmp_path / "c.pkl")
    torch.save(blob, src)
    tool = os.path.join(REPO, "tools", "convert_pretrained.py")
    ok = subprocess.run([sys.executable, tool, src, out, "--format", "pcl"], capture_output=True,
                        text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "120/120 Detectron2 backbone entries covered" in ok.stdout and os.path.exists(out)
    bad = str(tmp_path / "bad.pth")
    with open(bad, "wb") as f:
        f.write(b"\x00" * 10)
    err = subprocess.run([sys.executable, tool, bad, out], capture_output=True, text=True,
                         cwd=REPO)
    assert err.returncode == 2
    lines = [ln for ln in err.stderr.splitlines() if "Warning" not in ln and "warn(" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad.pth" in lines[0]


@pytest.mark.parametrize("path", ["configs/LT-Shapes/pretrained_R18_FPN_tiny.yaml",
                                  "configs/COCO-LT/pretrained_mask_rcnn_R_50_FPN_1x.yaml",
                                  "configs/LVISv1/pretrained_mask_rcnn_R_50_FPN_1x.yaml"])
def test_pretrained_configs(path):
    cfg = get_cfg()
    add_det_ext_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, path))
    assert cfg.INPUT.FORMAT == "RGB"
    assert list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.280, 103.530]
    assert list(cfg.MODEL.PIXEL_STD) == [58.395, 57.120, 57.375]
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert cfg.MODEL.RESNETS.NORM in ("BN", "SyncBN") and cfg.MODEL.FPN.NORM == \
        cfg.MODEL.RESNETS.NORM
