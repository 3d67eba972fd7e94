# Copyright (c) det_ext authors.
"""The main job on the embedded default: LT-Shapes + the tiny Mask R-CNN baseline, on CPU."""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict

from detectron2.data import DatasetCatalog
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .setup import build_config
from .trainer import DetExtTrainer
from .visualize import draw_prediction_grid

__all__ = ["DEFAULT_DEMO_CONFIG", "run_demo"]

DEFAULT_DEMO_CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "..", "configs", "LT-Shapes", "mask_rcnn_R18_FPN_tiny.yaml")


def run_demo(output_dir: str, config_file: str = DEFAULT_DEMO_CONFIG,
             opts: list | None = None) -> Dict[str, Any]:
    """Generates LT-Shapes if missing, trains the baseline, evaluates it on LT-Shapes val and draws
    predictions. Rerunning resumes from the last checkpoint in ``output_dir``.

    Args:
        output_dir (str): where the model, ``metrics.json`` and ``predictions.png`` go.
        config_file (str): the model config (default: the tiny LT-Shapes Mask R-CNN).
        opts (list[str] or None): config overrides.

    Returns:
        dict: ``{"results": {"bbox": {...}, "segm": {...}}, "output_dir", "metrics", "model",
        "predictions_png"}``.
    """
    cfg = build_config(config_file, ["OUTPUT_DIR", output_dir, *(opts or [])])
    default_setup(cfg, argparse.Namespace(config_file=config_file, eval_only=False, opts=opts))
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="det_ext")
    trainer = DetExtTrainer(cfg)
    trainer.resume_or_load(resume=True)
    results = trainer.train()
    if not results:  # nothing evaluated (e.g. no test set was run): evaluate the loaded model
        results = DetExtTrainer.test(cfg, trainer.model)
    val_name = cfg.DATASETS.TEST[0]
    png = draw_prediction_grid(cfg, trainer.model,
                               DatasetCatalog.get(val_name)[: cfg.LT_SHAPES.NUM_VIS_IMAGES],
                               val_name, os.path.join(output_dir, "predictions.png"))
    return {"results": results, "output_dir": os.path.abspath(output_dir),
            "metrics": os.path.join(os.path.abspath(output_dir), "metrics.json"),
            "model": os.path.join(os.path.abspath(output_dir), "model_final.pth"),
            "predictions_png": os.path.abspath(png)}
