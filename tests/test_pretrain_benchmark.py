# Copyright (c) det_ext authors.
"""The pre-training benchmark's summary of the issue's targets (hand-computed differences)."""
import importlib.util
import json
import os

import pytest

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


def test_det_seeds_must_be_positive(bench, capsys):
    with pytest.raises(SystemExit) as err:
        bench.parse_args(["--out", "r.json", "--det-seeds", "0"])
    assert err.value.code == 2
    assert "--det-seeds must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_benchmark_end_to_end_on_a_tiny_world(bench, tmp_path):
    """The whole benchmark (one epoch, 2 detection iterations with 2 seeds) on a 40-image world:
    the issue's JSON shape, the machine it ran on, and a second invocation that resumes every
    stage from state.json."""
    args = ["--out", str(tmp_path / "r.json"), "--work-dir", str(tmp_path / "work"),
            "--epochs", "1", "--det-iters", "2", "--det-seeds", "2", "--threads", "1",
            "--train-images", "40", "--val-images", "10",
            "--pretrain-opts", "PRETRAIN.SOLVER.BATCH_SIZE", "32"]
    state = bench.main(bench.parse_args(args))
    probe = state["linear_probe"]
    assert set(probe) == {"random", "instance_only", "pcl", "mopro", "iccl"}
    for result in probe.values():
        assert {"acc", "balanced_acc", "tail_acc"} <= set(result)
        assert 0.0 <= result["acc"] <= 100.0
    assert state["settings"]["machine"]["threads"] == 1
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
    # asking for one seed afterwards re-averages the stored runs over that seed only
    one_seed = list(args)
    one_seed[one_seed.index("--det-seeds") + 1] = "1"
    first = bench.main(bench.parse_args(one_seed))
    for name, det in first["detection"].items():
        assert json.dumps(det["AP_per_seed"]) == \
            json.dumps({"0": state["detection"][name]["AP_per_seed"]["0"]})
        assert "AP_std" not in det
