# Copyright (c) det_ext authors.
"""The pre-training benchmark's summary of the issue's targets (hand-computed differences)."""
import argparse
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from det_ext.pretrain.lt_shapes_benchmark import METHODS, pretrain_config, resolve_amp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "pretrain_lt_shapes", os.path.join(REPO, "benchmarks", "pretrain_lt_shapes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gaps_against_random_and_instance_only(bench):
    state = {"linear_probe": {"random": {"acc": 85.0, "balanced_acc": 60.0, "tail_acc": 50.0},
                              "instance_only": {"acc": 88.0, "balanced_acc": 75.5,
                                                "tail_acc": 60.5},
                              "iccl": {"acc": 90.25, "tail_acc": 70.0}},
             "detection": {"random": {"AP": 9.0}, "pcl": {"AP": 10.5}}}
    gaps = bench._gaps(state)
    assert gaps["linear_probe"] == {"instance_only": {"acc": 3.0, "balanced_acc": 15.5,
                                                      "tail_acc": 10.5},
                                    "iccl": {"acc": 5.25, "tail_acc": 20.0}}
    assert gaps["iccl_minus_instance_only_tail_acc"] == 9.5
    assert gaps["detection_AP"] == {"pcl": 1.5}
    # paired seeds: the backbone beat random initialisation trained with the same seed in 2 of 3
    state["detection"] = {"random": {"AP": 9.0, "AP_per_seed": {"0": 9.0, "1": 8.0, "2": 10.0}},
                          "iccl": {"AP": 9.5, "AP_per_seed": {"0": 9.5, "1": 9.0, "2": 10.0}}}
    gaps = bench._gaps(state)
    assert gaps["detection_AP"] == {"iccl": 0.5}
    assert gaps["detection_seeds_beating_random"] == {"iccl": "2/3"}  # a tie is not a win
    # low-shot probes: per k, against random initialisation's probe with the same k
    state["linear_probe_low_shot"] = {
        "random": {"1": {"acc": 30.0, "balanced_acc": 35.5, "tail_acc": 32.0},
                   "4": {"acc": 60.0, "balanced_acc": 50.0, "tail_acc": 45.0}},
        "pcl": {"1": {"acc": 52.25, "balanced_acc": 55.0, "tail_acc": 50.0, "acc_std": 3.0},
                "4": {"acc": 66.0, "balanced_acc": 66.5, "tail_acc": 63.0}},
        "mopro": {"1": {"acc": 70.0, "balanced_acc": 72.0, "tail_acc": 71.0},
                  "16": {"acc": 90.0}}}
    assert bench._gaps(state)["linear_probe_low_shot"] == {
        "pcl": {"1": {"acc": 22.25, "balanced_acc": 19.5, "tail_acc": 18.0},
                "4": {"acc": 6.0, "balanced_acc": 16.5, "tail_acc": 18.0}},
        "mopro": {"1": {"acc": 40.0, "balanced_acc": 36.5, "tail_acc": 39.0}}}  # no random k=16
    # stages not run yet are simply absent
    assert bench._gaps({"linear_probe": {}, "detection": {}}) == {"linear_probe": {},
                                                                 "detection_AP": {}}


def test_detection_mean_over_seeds(bench):
    runs = {"0": {"AP": 9.0, "AP50": 20.0, "APr": 1.0}, "1": {"AP": 10.0, "AP50": 23.0},
            "2": {"AP": 11.5, "AP50": 24.5}}
    agg = bench._mean_over_seeds(runs)
    # APr is missing from two runs, so it is not averaged; sample std of 9, 10, 11.5 = 1.258
    assert agg == {"AP": 10.167, "AP50": 22.5, "AP_per_seed": {"0": 9.0, "1": 10.0, "2": 11.5},
                   "AP_std": 1.258}
    one = bench._mean_over_seeds({"4": {"AP": 8.25}})
    assert one == {"AP": 8.25, "AP_per_seed": {"4": 8.25}}  # no std from one run


@pytest.mark.parametrize("argv, message", [
    (["--det-seeds", "0"], "--det-seeds must be at least 1, got 0"),
    (["--shots", "4", "0"], "--shots must be at least 1, got 0")])
def test_bad_counts_are_rejected(bench, capsys, argv, message):
    with pytest.raises(SystemExit) as err:
        bench.parse_args(["--out", "r.json"] + argv)
    assert err.value.code == 2
    assert message in capsys.readouterr().err


TINY_ARGS = ["--epochs", "1", "--det-iters", "2", "--det-seeds", "2", "--train-images", "40",
             "--val-images", "10", "--shots", "1", "2",
             "--pretrain-opts", "PRETRAIN.SOLVER.BATCH_SIZE", "32"]


@pytest.fixture(scope="module")
def tiny_run(bench, tmp_path_factory):
    """The whole benchmark (one epoch, 2 detection iterations with 2 seeds) on a 40-image world,
    every stage in this process with one thread: (arguments, returned state)."""
    work = tmp_path_factory.mktemp("bench")
    args = ["--out", str(work / "r.json"), "--work-dir", str(work / "work"), "--threads", "1"]
    args += TINY_ARGS
    return args, bench.main(bench.parse_args(args))


@pytest.mark.slow
def test_benchmark_end_to_end_on_a_tiny_world(bench, tiny_run):
    """The issue's JSON shape, the machine it ran on, and a second invocation that resumes every
    stage from state.json."""
    args, state = tiny_run
    tmp_path = Path(args[args.index("--work-dir") + 1]).parent
    probe = state["linear_probe"]
    assert set(probe) == {"random", "instance_only", "pcl", "mopro", "iccl"}
    for result in probe.values():
        assert {"acc", "balanced_acc", "tail_acc"} <= set(result)
        assert 0.0 <= result["acc"] <= 100.0
    assert state["settings"]["machine"]["threads"] == 1
    assert state["settings"]["machine"]["processes"] == 1
    assert state["settings"]["train_crops"] > 0
    assert state["settings"]["epochs"] == {m: 1 for m in METHODS}
    assert state["settings"]["amp"] == resolve_amp("auto", "cpu")
    for result in state["linear_probe_low_shot"].values():
        assert set(result) == {"1", "2"}
        assert result["1"]["num_train_samples"] < result["2"]["num_train_samples"]
    assert set(state["vs_random"]["linear_probe_low_shot"]["pcl"]) == {"1", "2"}
    assert set(state["vs_random"]["linear_probe"]) == {"instance_only", "pcl", "mopro", "iccl"}
    for name in ("random", "pcl", "mopro", "iccl"):
        det = state["detection"][name]
        assert set(det["AP_per_seed"]) == {"0", "1"}
        assert det["AP"] == pytest.approx(sum(det["AP_per_seed"].values()) / 2, abs=1e-3)
    assert set(state["conversion"]) == {"pcl", "mopro", "iccl"}  # converted, fully covered
    assert set(state["vs_random"]["detection_seeds_beating_random"]) == {"pcl", "mopro", "iccl"}
    again = bench.main(bench.parse_args(args))  # every stage is read back, nothing retrained
    assert again["linear_probe"] == probe
    for stage in ("pretrain_instance_only", "pretrain_pcl", "pretrain_mopro", "pretrain_iccl"):
        assert again["timing_s"][stage] == state["timing_s"][stage]  # stored, not re-timed
    # json text, so that NaN (APr of a world without rare validation objects) compares equal
    assert json.dumps(again["detection"], sort_keys=True) == \
        json.dumps(state["detection"], sort_keys=True)
    assert again["timing_s"]["detection_iccl_seed1"] == state["timing_s"]["detection_iccl_seed1"]
    # a state without low-shot probes (an older run) gets them from the stored checkpoints
    state_path = tmp_path / "work" / "state.json"
    stored = json.loads(state_path.read_text())
    del stored["linear_probe_low_shot"]
    state_path.write_text(json.dumps(stored))
    upgraded = bench.main(bench.parse_args(args))
    assert upgraded["linear_probe"] == probe  # same encoders, same full probes
    assert upgraded["linear_probe_low_shot"] == state["linear_probe_low_shot"]
    for stage in ("pretrain_pcl", "pretrain_iccl"):
        assert upgraded["timing_s"][stage] == state["timing_s"][stage]  # nothing retrained
    # asking for one seed afterwards re-averages the stored runs over that seed only
    one_seed = list(args)
    one_seed[one_seed.index("--det-seeds") + 1] = "1"
    first = bench.main(bench.parse_args(one_seed))
    for name, det in first["detection"].items():
        assert json.dumps(det["AP_per_seed"]) == \
            json.dumps({"0": state["detection"][name]["AP_per_seed"]["0"]})
        assert "AP_std" not in det


@pytest.mark.slow
def test_parallel_stages_reproduce_the_sequential_run(bench, tiny_run, tmp_path):
    """Two worker processes of one thread each (--threads 2 --jobs 2) give exactly the results
    of the in-process run with one thread: every stage seeds itself, whatever ran before it."""
    _, sequential = tiny_run
    args = ["--out", str(tmp_path / "r.json"), "--work-dir", str(tmp_path / "work"),
            "--threads", "2", "--jobs", "2"] + TINY_ARGS
    state = bench.main(bench.parse_args(args))
    assert state["settings"]["machine"]["threads"] == 1
    assert state["settings"]["machine"]["processes"] == 2
    for key in ("linear_probe", "linear_probe_low_shot", "detection", "vs_random", "conversion",
                "mopro_noise"):
        assert json.dumps(state[key], sort_keys=True) == \
            json.dumps(sequential[key], sort_keys=True), key
    stored = json.loads((tmp_path / "work" / "state.json").read_text())
    assert set(stored["detection_runs"]["iccl"]) == {"0", "1"}  # recorded as each finished


def test_jobs_must_fit_in_the_threads(bench, capsys):
    with pytest.raises(SystemExit) as err:
        bench.parse_args(["--out", "r.json", "--threads", "2", "--jobs", "3"])
    assert err.value.code == 2
    assert "--jobs must be between 0 and --threads (2), got 3" in capsys.readouterr().err


def test_every_pretrained_backbone_has_a_converter_format():
    from det_ext.pretrain.convert import FORMAT_PREFIXES
    from det_ext.pretrain.lt_shapes_benchmark import CONVERT_FORMAT, DETECTION

    for name in set(METHODS) | set(DETECTION) - {"random"}:
        assert CONVERT_FORMAT[name] in FORMAT_PREFIXES, name


def test_amp_choice_reaches_every_pretraining_config(monkeypatch):
    names = {"train": "lt_shapes_train", "val": "lt_shapes_val"}
    for amp, enabled in (("bfloat16", True), ("off", False)):
        args = argparse.Namespace(work_dir="w", seed=0, amp=amp, epochs=0, pretrain_opts=[])
        for method in METHODS:
            solver = pretrain_config(method, args, names).PRETRAIN.SOLVER
            assert solver.AMP.ENABLED is enabled and solver.AMP.DTYPE == "bfloat16", method
    # "auto" follows the pre-training device's hardware: bfloat16 instructions on the CPU, or
    # bfloat16 support of the GPU; a GPU beside a CPU-only pre-training does not count
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    for flag in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, flag, lambda: False, raising=False)
    assert resolve_amp("auto", "cpu") == "off" and resolve_amp("bfloat16") == "bfloat16"
    assert resolve_amp("auto", "cuda") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_amp("auto", "cuda:0") == "off"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert resolve_amp("auto", "cpu") == "bfloat16" and resolve_amp("off") == "off"
    # ICCL is pre-trained in bfloat16 like the others, with its interpolated images in float32
    # (its bfloat16 mixed forward made the backbones transfer worse to detection)
    args = argparse.Namespace(work_dir="w", seed=0, epochs=0, pretrain_opts=[],
                              amp=resolve_amp("auto", "cpu"))
    iccl = pretrain_config("iccl", args, names).PRETRAIN
    assert iccl.SOLVER.AMP.ENABLED and iccl.ICCL.MIXED_FORWARD_FLOAT32
