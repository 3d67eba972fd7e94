# Copyright (c) det_ext authors.
"""A few CPU training iterations of the tiny LT-Shapes Mask R-CNN, evaluation and CLI errors."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_model_opts

from det_ext.engine import DetExtTrainer, build_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "configs", "LT-Shapes", "mask_rcnn_R18_FPN_tiny.yaml")


def test_a_few_cpu_iterations_train_and_evaluate(tiny_world, tmp_path):
    cfg = build_config(TINY_CONFIG, tiny_model_opts(str(tmp_path), max_iter=3))
    trainer = DetExtTrainer(cfg)
    trainer.resume_or_load(resume=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    results = trainer.train()
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with open(tmp_path / "training_metrics.json") as f:
        lines = [json.loads(line) for line in f]
    losses = [v for line in lines for k, v in line.items() if k.startswith("loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert os.path.isfile(tmp_path / "model_final.pth")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    # train() ends with an evaluation on the val split, saved as metrics.json (percent)
    with open(tmp_path / "metrics.json") as f:
        metrics = json.load(f)
    assert set(metrics) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"):
            assert key in metrics[task]
        assert metrics[task]["AP"] == pytest.approx(results[task]["AP"])


def test_trainer_is_seeded_from_cfg_seed(tiny_world, tmp_path):
    """Two trainers built in one process, with random draws between them, start from the same
    weights and the same first batch (cfg.SEED), as two runs of tools/train_net.py do."""
    cfg = build_config(TINY_CONFIG, tiny_model_opts(str(tmp_path), max_iter=3))
    runs = []
    for draws in (1, 1000):
        torch.rand(draws), np.random.rand(draws)
        trainer = DetExtTrainer(cfg)
        batch = next(trainer._trainer._data_loader_iter)
        runs.append((trainer.model.state_dict(), [d["image_id"] for d in batch]))
    (w0, ids0), (w1, ids1) = runs
    assert ids0 == ids1
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


def _run_tool(args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_bad_inputs_exit_non_zero_with_one_clear_line(tmp_path, tiny_world):
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text(f'_BASE_: "{TINY_CONFIG}"\nMODEL:\n  NO_SUCH_KEY: 3\n')
    proc = _run_tool(["tools/train_net.py", "--config-file", str(bad_cfg)])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {bad_cfg}: unknown config key 'MODEL.NO_SUCH_KEY'")

    proc = _run_tool(["tools/train_net.py", "--config-file", TINY_CONFIG, "--eval-only",
                      "MODEL.WEIGHTS", str(tmp_path / "missing.pth")])
    assert proc.returncode == 2
    assert "MODEL.WEIGHTS: weight file not found" in proc.stderr.strip().splitlines()[-1]

    # A truncated dataset file: the error names the file; nothing is written to OUTPUT_DIR.
    broken = tmp_path / "coco_lt_train.json"
    broken.write_text('{"images": [{"id": 1, "height": 4')
    out = tmp_path / "out"
    (tmp_path / "coco" / "train2017").mkdir(parents=True)
    proc = _run_tool(["tools/train_net.py", "--config-file", TINY_CONFIG,
                      "DATASETS.TRAIN", "('coco_lt_train',)", "DATASETS.TEST", "()",
                      "OUTPUT_DIR", str(out)],
                     {"DET_EXT_COCO_LT_TRAIN_JSON": str(broken),
                      "DETECTRON2_DATASETS": str(tmp_path)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and str(broken) in last
