# Copyright (c) det_ext authors.
"""The pre-training benchmark's summary of the issue's targets (hand-computed differences)."""
import importlib.util
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
    # stages not run yet are simply absent
    assert bench._gaps({"linear_probe": {}, "detection": {}}) == {"linear_probe": {},
                                                                 "detection_AP": {}}


@pytest.mark.slow
def test_benchmark_end_to_end_on_a_tiny_world(bench, tmp_path):
    """The whole benchmark (one epoch, no detection) on a 40-image world: the issue's JSON shape,
    the machine it ran on, and a second invocation that resumes every stage from state.json."""
    args = ["--out", str(tmp_path / "r.json"), "--work-dir", str(tmp_path / "work"),
            "--epochs", "1", "--det-iters", "0", "--threads", "1",
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
    again = bench.main(bench.parse_args(args))  # every stage is read back, nothing retrained
    assert again["linear_probe"] == probe
    for stage in ("pretrain_instance_only", "pretrain_pcl", "pretrain_mopro", "pretrain_iccl"):
        assert again["timing_s"][stage] == state["timing_s"][stage]  # stored, not re-timed
