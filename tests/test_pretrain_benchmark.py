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
