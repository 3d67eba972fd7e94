# Copyright (c) det_ext authors.
"""Pre-training loop on tiny LT-Shapes crops: checkpoints in the reference format, resume, the
converter reading our checkpoints, and the pretrain_net CLI."""
import math
import os
import subprocess
import sys

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from det_ext.pretrain.cli import build_pretrain_config
from det_ext.pretrain.convert import convert_checkpoint
from det_ext.pretrain.data import SampleSet, load_sample_set, with_label_noise
from det_ext.pretrain.train import PretrainRunner
from det_ext.utils.errors import ConfigInputError

from conftest import tiny_pretrain_opts as _opts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_samples(tiny_world):
    cfg = build_pretrain_config("", _opts("/tmp/unused", "pcl"))
    s = load_sample_set(cfg.PRETRAIN.DATA, seed=1)
    keep = torch.arange(32)  # 2 batches per epoch keep the test fast
    return SampleSet(s.images[keep], s.labels[keep], s.clean_labels[keep], s.class_names,
                     s.class_frequency)


@pytest.mark.parametrize("noise_type", ["symmetric", "prior"])
def test_label_noise_of_sample_set(tiny_world, noise_type):
    cfg = build_pretrain_config("", _opts("/tmp/unused", "mopro") +
                                ["PRETRAIN.DATA.NOISE_TYPE", noise_type])
    s = load_sample_set(cfg.PRETRAIN.DATA, seed=3)
    changed = s.labels != s.clean_labels
    assert int(changed.sum()) == round(0.2 * len(s.labels))
    assert s.labels.min() >= 0 and s.labels.max() < s.num_classes
    assert torch.equal(load_sample_set(cfg.PRETRAIN.DATA, seed=3).labels, s.labels)
    clean = load_sample_set(cfg.PRETRAIN.DATA, noise=False)
    assert torch.equal(clean.labels, s.clean_labels)
    # Adding the noise to loaded clean samples draws the same labels and shares the images.
    again = with_label_noise(clean, cfg.PRETRAIN.DATA, seed=3)
    assert torch.equal(again.labels, s.labels) and torch.equal(again.clean_labels, clean.labels)
    assert again.images is clean.images and torch.equal(clean.labels, clean.clean_labels)


def test_crops_from_tiny_world(tiny_world):
    cfg = build_pretrain_config("", _opts("/tmp/unused", "mopro"))
    s = load_sample_set(cfg.PRETRAIN.DATA, seed=1)
    meta = MetadataCatalog.get(tiny_world["train"])
    assert s.images.dtype == torch.uint8 and s.images.shape[1:] == (3, 20, 20)
    assert s.class_names == list(meta.thing_classes)
    assert sum(meta.class_instance_count) == len(s)  # one crop per training instance
    flipped = (s.labels != s.clean_labels).float().mean()
    assert abs(float(flipped) - 0.2) < 0.01


@pytest.mark.parametrize("method", ["moco", "pcl", "mopro", "iccl"])
def test_checkpoint_format_and_conversion(tmp_path, tiny_samples, method):
    cfg = build_pretrain_config("", _opts(tmp_path, method, epochs=2))
    runner = PretrainRunner(cfg, tiny_samples)
    history = runner.train()
    assert [h["epoch"] for h in history] == [1, 2]
    assert "loss_inst" in history[-1]
    assert {"moco": "loss_inst", "pcl": "loss_proto", "mopro": "loss_proto",
            "iccl": "loss_icc"}[method] in history[1]
    blob = torch.load(tmp_path / "checkpoint_last.pth.tar", weights_only=True)
    assert set(blob) == {"epoch", "arch", "state_dict", "optimizer"} and blob["epoch"] == 2
    keys = blob["state_dict"]
    assert {"module.queue", "module.queue_ptr", "module.encoder_q.conv1.weight",
            "module.encoder_k.layer4.1.bn2.running_var"} <= set(keys)
    if method == "mopro":
        assert keys["module.prototypes"].shape == (8, 16)
        assert {"module.encoder_q.classifier.weight", "module.encoder_q.fc2.weight"} <= set(keys)
    if method == "pcl":
        assert "module.encoder_q.fc.2.weight" in keys
    assert os.path.isfile(tmp_path / "checkpoint_0001.pth.tar")
    report = convert_checkpoint(str(tmp_path / "checkpoint_last.pth.tar"),
                                str(tmp_path / "b.pkl"), method)
    assert report.complete and report.depth == 18


def test_resume_continues_identically(tmp_path, tiny_samples):
    full = PretrainRunner(build_pretrain_config("", _opts(tmp_path / "full", "pcl", 2)),
                          tiny_samples)
    full.train()
    first = PretrainRunner(build_pretrain_config("", _opts(tmp_path / "part", "pcl", 1)),
                           tiny_samples)
    first.train()  # "killed" after epoch 1
    second = PretrainRunner(build_pretrain_config("", _opts(tmp_path / "part", "pcl", 2)),
                            tiny_samples)
    assert second.resume() and second.start_epoch == 1
    history = second.train()
    assert [h["epoch"] for h in history] == [1, 2]
    a, b = full.model.state_dict(), second.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_mopro_sampler_exponent(tmp_path, tiny_world):
    cfg0 = build_pretrain_config("", _opts(tmp_path, "mopro", 1))
    samples = load_sample_set(cfg0.PRETRAIN.DATA, seed=1)
    counts = torch.bincount(samples.labels, minlength=samples.num_classes).float()
    present, epochs = counts > 0, 40

    def drawn(exponent: float) -> torch.Tensor:
        cfg = build_pretrain_config("", _opts(tmp_path, "mopro", 1) +
                                    ["PRETRAIN.MOPRO.SAMPLER_EXPONENT", str(exponent)])
        runner, idx = PretrainRunner(cfg, samples), []
        for epoch in range(epochs):
            main, class_aware, n_iter = runner._loaders(epoch)
            assert class_aware is None and len(main) == n_iter == len(samples) // 16
            idx += [int(i) for i in main.sampler]
        return torch.bincount(samples.labels[torch.tensor(idx)], minlength=samples.num_classes)

    assert float(counts.max() / counts[present].min()) > 10  # the data are long-tailed
    # Exponent 1 (default): each epoch a permutation, so each class as often as it occurs.
    assert torch.equal(drawn(1.0).float(), epochs * counts)
    # Exponent 0: every (noisy) label class about equally often, whatever its frequency.
    share = drawn(0.0)[present].float() / (epochs * (len(samples) // 16) * 16)
    torch.testing.assert_close(share, torch.full_like(share, 1 / int(present.sum())),
                               atol=0.02, rtol=0)


def test_pcl_cluster_balanced_sampler(tmp_path, tiny_samples):
    opts = _opts(tmp_path, "pcl", 1) + ["PRETRAIN.PCL.SAMPLER_EXPONENT", "0.0",
                                        "PRETRAIN.PCL.NUM_CLUSTERS", "[3, 2]"]
    runner = PretrainRunner(build_pretrain_config("", opts), tiny_samples)
    n = len(tiny_samples)
    runner.model.set_clusters(None)  # warm-up: instance sampling, a permutation
    assert sorted(int(i) for i in runner._loaders(0)[0].sampler) == list(range(n))
    # Coarsest granularity (2 clusters): one cluster of 4 samples, one of n - 4.
    coarse = (torch.arange(n) >= 4).long()
    fine = torch.arange(n) % 3
    runner.model.set_clusters({"im2cluster": [fine, coarse], "centroids": [], "density": []})
    idx = torch.tensor([int(i) for e in range(30) for i in runner._loaders(e)[0].sampler])
    share = float((idx < 4).float().mean())
    assert abs(share - 0.5) < 0.05  # the small cluster drawn as often as the large one


def test_runner_follows_temperature_schedule(tmp_path, tiny_samples):
    opts = _opts(tmp_path, "moco", 2) + ["PRETRAIN.MOCO.TEMPERATURE_SCHEDULE", "cosine",
                                         "PRETRAIN.MOCO.TEMPERATURE_PERIOD", "1.0"]
    runner = PretrainRunner(build_pretrain_config("", opts), tiny_samples)
    seen = []
    logits = runner.model.instance_logits

    def recording(q, k):
        seen.append(runner.model.instance_temperature)
        return logits(q, k)

    runner.model.instance_logits = recording
    runner.train()
    n_iter = len(tiny_samples) // 16
    assert len(seen) == 2 * n_iter >= 4
    # One period per epoch: tau_max (1.0) at each epoch's first iteration, down towards 0.1.
    expected = [0.1 + 0.45 * (1 + math.cos(2 * math.pi * i / n_iter)) for i in range(n_iter)]
    assert seen == pytest.approx(expected * 2, abs=1e-9)


def test_config_errors():
    with pytest.raises(ConfigInputError, match="PRETRAIN.METHOD"):
        build_pretrain_config("", ["PRETRAIN.METHOD", "simclr"])
    with pytest.raises(ConfigInputError, match="PRETRAIN.DATA.NOISE_TYPE"):
        build_pretrain_config("", ["PRETRAIN.DATA.NOISE_TYPE", "pairs"])
    with pytest.raises(ConfigInputError, match=r"BACKGROUND_SWAP_PROB: 1.5 is not in \[0, 1\]"):
        build_pretrain_config("", ["PRETRAIN.AUG.BACKGROUND_SWAP_PROB", "1.5"])
    with pytest.raises(ConfigInputError, match="LOGIT_ADJUSTMENT: -1.0 is negative"):
        build_pretrain_config("", ["PRETRAIN.MOPRO.LOGIT_ADJUSTMENT", "-1.0"])
    for node in ("MOPRO", "PCL"):
        with pytest.raises(ConfigInputError, match=f"{node}.SAMPLER_EXPONENT: -0.5 is negative"):
            build_pretrain_config("", [f"PRETRAIN.{node}.SAMPLER_EXPONENT", "-0.5"])
    with pytest.raises(ConfigInputError, match="TEMPERATURE_SCHEDULE: unknown schedule 'step'"):
        build_pretrain_config("", ["PRETRAIN.MOCO.TEMPERATURE_SCHEDULE", "step"])
    cosine = ["PRETRAIN.MOCO.TEMPERATURE_SCHEDULE", "cosine"]
    with pytest.raises(ConfigInputError, match=r"TEMPERATURE_RANGE: \(0.5, 0.1\)"):
        build_pretrain_config("", cosine + ["PRETRAIN.MOCO.TEMPERATURE_RANGE", "(0.5, 0.1)"])
    with pytest.raises(ConfigInputError, match="TEMPERATURE_PERIOD: 0.0 is not positive"):
        build_pretrain_config("", cosine + ["PRETRAIN.MOCO.TEMPERATURE_PERIOD", "0.0"])
    with pytest.raises(ConfigInputError, match="NO_SUCH_KEY"):
        build_pretrain_config("", ["PRETRAIN.NO_SUCH_KEY", "1"])
    with pytest.raises(ConfigInputError, match="missing.yaml"):
        build_pretrain_config("missing.yaml")
    for name in ("pcl", "mopro", "iccl", "instance_only"):
        path = os.path.join(REPO, f"configs/pretrain/{name}_R18_lt_shapes.yaml")
        cfg = build_pretrain_config(path)
        assert cfg.PRETRAIN.MODEL.ARCH == "resnet18"


@pytest.mark.slow
def test_cli_json_source(tmp_path, tiny_world):
    DatasetCatalog.get(tiny_world["train"])  # the world's files are written on first load
    meta = MetadataCatalog.get(tiny_world["train"])
    out = tmp_path / "run"
    opts = _opts(out, "iccl", epochs=1)
    opts[opts.index("PRETRAIN.DATA.DATASETS"):opts.index("PRETRAIN.DATA.DATASETS") + 2] = [
        "PRETRAIN.DATA.SOURCE", "json", "PRETRAIN.DATA.JSON_FILE", meta.json_file,
        "PRETRAIN.DATA.IMAGE_ROOT", meta.image_root]
    tool = os.path.join(REPO, "tools", "pretrain_net.py")
    res = subprocess.run([sys.executable, tool, "--method", "iccl", *opts], capture_output=True,
                         text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    assert os.path.isfile(out / "checkpoint_last.pth.tar") and os.path.isfile(out / "config.yaml")
    bad = subprocess.run([sys.executable, tool, "--method", "pcl", "PRETRAIN.BAD_KEY", "1"],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "error: " in bad.stderr and "BAD_KEY" in bad.stderr


@pytest.mark.parametrize("method", ["pcl", "mopro", "iccl"])
def test_bfloat16_autocast_trains_like_float32(tmp_path, tiny_samples, method):
    def run(amp: bool):
        opts = _opts(tmp_path / str(amp), method, 2) + ["PRETRAIN.SOLVER.AMP.ENABLED", str(amp)]
        runner = PretrainRunner(build_pretrain_config("", opts), tiny_samples)
        outputs, embedding_dtypes = [], []
        runner.model.register_forward_hook(lambda m, args, out: outputs.append(
            {k: (v.dtype, float(v.detach())) for k, v in out.items()}))
        runner.model.encoder_q.register_forward_hook(
            lambda m, args, out: embedding_dtypes.append(out["embedding"].dtype))
        runner.train()
        return runner, outputs, set(embedding_dtypes)

    ref, ref_out, ref_dtypes = run(False)
    amp, amp_out, amp_dtypes = run(True)
    # ICCL's interpolated images go through in float32 (PRETRAIN.ICCL.MIXED_FORWARD_FLOAT32).
    assert ref_dtypes == {torch.float32}
    assert amp_dtypes == ({torch.bfloat16, torch.float32} if method == "iccl" else {torch.bfloat16})
    assert len(amp_out) == len(ref_out) == 2 * (len(tiny_samples) // 16)
    # Same first step (same weights and batch) within bfloat16's precision; losses in float32.
    for k, (dtype, value) in ref_out[0].items():
        assert amp_out[0][k][0] == dtype == torch.float32, k
        assert amp_out[0][k][1] == pytest.approx(value, rel=0.05, abs=0.02), k
    assert all(math.isfinite(v) for out in amp_out for _, v in out.values())
    # Weights, queue and prototypes stay float32.
    assert {v.dtype for v in amp.model.state_dict().values()} <= {torch.float32, torch.int64}


def test_amp_dtype_is_checked():
    with pytest.raises(ConfigInputError, match="PRETRAIN.SOLVER.AMP.DTYPE: unknown dtype 'fp8'"):
        build_pretrain_config("", ["PRETRAIN.SOLVER.AMP.DTYPE", "fp8"])


def test_float16_autocast_scales_gradients_and_resumes_the_scaler(tmp_path, tiny_samples):
    """float16 (meant for GPUs; CPU autocast runs it too) goes through a gradient scaler, whose
    state is saved with the checkpoint and restored on resume."""
    amp = ["PRETRAIN.SOLVER.AMP.ENABLED", "True", "PRETRAIN.SOLVER.AMP.DTYPE", "float16"]
    runner = PretrainRunner(build_pretrain_config("", _opts(tmp_path, "pcl", 1) + amp),
                            tiny_samples)
    assert runner.grad_scaler.is_enabled()
    history = runner.train()
    assert all(math.isfinite(v) for v in history[0].values())
    blob = torch.load(tmp_path / "checkpoint_last.pth.tar", weights_only=True)
    assert set(blob) == {"epoch", "arch", "state_dict", "optimizer", "grad_scaler"}
    resumed = PretrainRunner(build_pretrain_config("", _opts(tmp_path, "pcl", 2) + amp),
                             tiny_samples)
    assert resumed.resume()
    assert resumed.grad_scaler.get_scale() == runner.grad_scaler.get_scale()
