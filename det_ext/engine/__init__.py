# Copyright (c) det_ext authors.
"""Training and evaluation engine: config setup, the det_ext trainer, command-line launching."""
from .launch import launch_from_args, run_cli, train_net_main
from .setup import build_config, check_weights_file, setup
from .trainer import (
    TRAINER_REGISTRY,
    AtomicDetectionCheckpointer,
    DetExtTrainer,
    build_det_ext_evaluator,
    build_trainer_class,
    save_metrics,
)

__all__ = [
    "DetExtTrainer", "TRAINER_REGISTRY", "build_trainer_class", "AtomicDetectionCheckpointer",
    "build_det_ext_evaluator", "save_metrics", "build_config", "setup", "check_weights_file",
    "train_net_main", "run_cli", "launch_from_args",
]
