# Copyright (c) det_ext authors.
"""Mixed-precision detector training on any device, selected by ``SOLVER.AMP``.

Detectron2's ``AMPTrainer`` runs ``torch.cuda.amp`` and asserts that CUDA is present, so
``SOLVER.AMP.ENABLED`` fails on a CPU. :func:`enable_amp` keeps Detectron2's trainer on CUDA
(with the precision of ``SOLVER.AMP.DTYPE``) and, on a CPU, trains with the plain
``SimpleTrainer`` while the model's training forward passes run under bfloat16
``torch.autocast``. bfloat16 keeps float32's exponent range, so no gradient scaling is needed;
weights, gradients and optimizer state stay float32, and evaluation (the model in eval mode)
stays float32 as in Detectron2.
"""
from __future__ import annotations

import logging
from typing import Any, Tuple

import torch
from detectron2.config import CfgNode

from det_ext.utils.errors import ConfigInputError

__all__ = ["AMP_DTYPES", "amp_dtype", "autocast_training_forward", "disable_amp_on_cpu",
           "enable_amp"]

logger = logging.getLogger(__name__)

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def amp_dtype(cfg: CfgNode) -> torch.dtype:
    """The autocast dtype named by ``SOLVER.AMP.DTYPE``, checked against ``MODEL.DEVICE``.

    Raises:
        ConfigInputError: for an unknown dtype, or float16 on a CPU (it needs gradient scaling,
            which only Detectron2's CUDA trainer does; use bfloat16 there).
    """
    name = cfg.SOLVER.AMP.DTYPE
    if name not in AMP_DTYPES:
        raise ConfigInputError(
            f"SOLVER.AMP.DTYPE: '{name}' is not one of {sorted(AMP_DTYPES)}")
    if name == "float16" and device_type(cfg) == "cpu":
        raise ConfigInputError(
            "SOLVER.AMP.DTYPE: float16 mixed precision needs CUDA (MODEL.DEVICE is "
            f"'{cfg.MODEL.DEVICE}'); set SOLVER.AMP.DTYPE bfloat16 to train a CPU model in "
            "mixed precision")
    return AMP_DTYPES[name]


def device_type(cfg: CfgNode) -> str:
    """``"cuda"`` or ``"cpu"``: the device type of ``MODEL.DEVICE`` (e.g. ``"cuda:1"``)."""
    return torch.device(cfg.MODEL.DEVICE).type


def autocast_training_forward(model: torch.nn.Module, dtype: torch.dtype,
                              device: str = "cpu") -> Tuple[Any, Any]:
    """Runs ``model``'s forward passes under ``torch.autocast(device, dtype)`` while it is in
    training mode; in eval mode it runs as before.

    Implemented with a forward pre-hook that enters the autocast context and a forward hook
    (called even when the forward raises) that leaves it, so the trainer, checkpoints and
    ``state_dict`` keys are untouched.

    Returns:
        The two hook handles; ``handle.remove()`` on both turns autocast off again.
    """
    active: list = []  # per call in flight: its entered autocast context, or None in eval

    def enter(module: torch.nn.Module, args: Any) -> None:
        context = torch.autocast(device, dtype=dtype) if module.training else None
        if context is not None:
            context.__enter__()
        active.append(context)

    def leave(module: torch.nn.Module, args: Any, output: Any) -> None:
        context = active.pop()
        if context is not None:
            context.__exit__(None, None, None)

    return (model.register_forward_pre_hook(enter),
            model.register_forward_hook(leave, always_call=True))


def disable_amp_on_cpu(cfg: CfgNode) -> CfgNode:
    """``cfg`` itself, or for a CPU model with ``SOLVER.AMP.ENABLED`` a copy with it off: the
    config to build Detectron2's ``DefaultTrainer`` from, which would otherwise build the
    CUDA-only ``AMPTrainer``. :func:`enable_amp` then turns mixed precision on."""
    if not cfg.SOLVER.AMP.ENABLED or device_type(cfg) != "cpu":
        return cfg
    cfg = cfg.clone()
    _set_amp_enabled(cfg, False)
    return cfg


def enable_amp(trainer: Any, cfg: CfgNode) -> None:
    """Turns on the mixed precision of ``cfg`` in a ``DefaultTrainer`` built from
    :func:`disable_amp_on_cpu` (``cfg``).

    On CUDA, Detectron2's ``AMPTrainer`` gets the precision of ``SOLVER.AMP.DTYPE``. On a CPU the
    trainer stays a ``SimpleTrainer`` and the model's training forward passes run under bfloat16
    autocast (:func:`autocast_training_forward`); ``trainer.cfg`` records AMP as enabled again.
    """
    if not cfg.SOLVER.AMP.ENABLED:
        return
    dtype = amp_dtype(cfg)
    if device_type(cfg) == "cuda":
        trainer._trainer.precision = dtype
    else:
        model = trainer._trainer.model
        autocast_training_forward(getattr(model, "module", model), dtype, "cpu")
        _set_amp_enabled(trainer.cfg, True)
    logger.info("Mixed-precision training: %s autocast on %s", cfg.SOLVER.AMP.DTYPE,
                device_type(cfg))


def _set_amp_enabled(cfg: CfgNode, enabled: bool) -> None:
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.SOLVER.AMP.ENABLED = enabled
    if frozen:
        cfg.freeze()
