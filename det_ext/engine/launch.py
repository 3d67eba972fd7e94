# Copyright (c) det_ext authors.
"""``train_net`` main function and the error handling shared by det_ext's command-line tools."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Dict, Optional

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from det_ext.utils.errors import DetExtInputError

from .setup import setup
from .trainer import build_trainer_class

__all__ = ["train_net_main", "run_cli", "launch_from_args"]


def train_net_main(args: argparse.Namespace, trainer_cls: Optional[type] = None) -> Dict[str, Any]:
    """Trains (or, with ``--eval-only``, evaluates) the model described by ``args``.

    Args:
        args (argparse.Namespace): from ``detectron2.engine.default_argument_parser()``.
        trainer_cls (type or None): the trainer class; by default the one named by
            ``cfg.DET_EXT.TRAINER`` (see :data:`~det_ext.engine.trainer.TRAINER_REGISTRY`).

    Returns:
        dict: evaluation results (percent), empty when nothing was evaluated.
    """
    cfg = setup(args)
    trainer_cls = trainer_cls or build_trainer_class(cfg)
    if args.eval_only:
        model = trainer_cls.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        results = trainer_cls.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train() or {}


def run_cli(fn: Callable[..., Any], *args: Any) -> Any:
    """Runs ``fn(*args)``; a :class:`DetExtInputError` becomes one error line and exit status 2."""
    try:
        return fn(*args)
    except DetExtInputError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)


def launch_from_args(main: Callable[[argparse.Namespace], Any],
                     argv: list | None = None) -> None:
    """Parses Detectron2's standard arguments and launches ``main`` on every process
    (``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``)."""
    args = default_argument_parser().parse_args(argv)
    run_cli(launch, main, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url,
            (args,))
