# Copyright (c) det_ext authors.
"""Config keys of det_ext. Each component family adds its node here, with a comment on every key."""
from __future__ import annotations

from detectron2.config import CfgNode as CN

from .noisy import add_noisy_config
from .open_vocab import add_open_vocab_config
from .pseudo import add_pseudo_config
from .simcal import add_simcal_config

__all__ = ["add_det_ext_config"]


def _add_evaluation_config(cfg: CN) -> None:
    # Edges of the training instance-count bins reported as AP1..AP4 by the LVIS-style evaluator
    # (bin i is [edge_i, edge_{i+1}), the last one open). Default: SimCal's COCO-LT bins
    # [1,20), [20,400), [400,8000), [8000,inf). LVIS-style bins: [0, 10, 100, 1000].
    cfg.TEST.INSTANCE_COUNT_BINS = [1, 20, 400, 8000]
    # Fixed-AP style cap on detections per category over the whole dataset (0: no cap). The
    # per-image cap is TEST.DETECTIONS_PER_IMAGE, which the LVIS-style evaluator honours.
    cfg.TEST.MAX_DETS_PER_CATEGORY = 0


def _add_engine_config(cfg: CN) -> None:
    cfg.DET_EXT = CN()
    # Trainer class run by tools/train_net.py, from det_ext.engine.TRAINER_REGISTRY
    # ("DetExtTrainer": standard training; other stages register their own).
    cfg.DET_EXT.TRAINER = "DetExtTrainer"
    # Autocast dtype of SOLVER.AMP.ENABLED training: "float16" (Detectron2's CUDA AMP) or
    # "bfloat16" (CUDA, or a CPU: DetExtTrainer runs the training forward under bfloat16
    # autocast there, fastest on CPUs with AVX512-BF16 or AMX; no gradient scaling needed).
    cfg.SOLVER.AMP.DTYPE = "float16"


def _add_lt_shapes_config(cfg: CN) -> None:
    cfg.LT_SHAPES = CN()
    # Number of validation images drawn with predictions by tools/demo.py.
    cfg.LT_SHAPES.NUM_VIS_IMAGES = 6


def add_det_ext_config(cfg: CN) -> None:
    """Adds all det_ext config keys to ``cfg`` in place (call before ``merge_from_file``).

    Args:
        cfg (CfgNode): a config from ``detectron2.config.get_cfg()``.
    """
    from det_ext import register_all

    register_all()  # every component the keys below can name is then registered
    _add_engine_config(cfg)
    _add_evaluation_config(cfg)
    _add_lt_shapes_config(cfg)
    add_noisy_config(cfg)
    add_pseudo_config(cfg)
    add_simcal_config(cfg)
    add_open_vocab_config(cfg)
