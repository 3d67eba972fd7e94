# Copyright (c) det_ext authors.
"""SimCal calibration classification heads (``3fc_ft``, ``3fc_rand``, ``2fc_rand``).

A calibration head maps pooled RoI features (R, C_feat, P, P) to C+1 logits with Detectron2's
column order: foreground classes 0..C-1, background last (index C).
"""
from __future__ import annotations

import copy
import logging
from typing import Callable, Dict

import torch
from detectron2.layers import ShapeSpec
from torch import nn

__all__ = ["CalibrationHead", "CALIBRATION_HEADS", "build_calibration_head"]

logger = logging.getLogger(__name__)


class CalibrationHead(nn.Module):
    """A feature trunk followed by a (C+1)-way linear classifier.

    Attributes:
        trunk (nn.Module): (R, C_feat, P, P) -> (R, D).
        cls_score (nn.Linear): (R, D) -> (R, C+1).
        copy_from_original (bool): whether :meth:`initialize_from` copies the original head.
        initialized (Tensor): persistent 0/1 flag: 1 once the head was initialised from (or
            trained on top of) a detector, so that loading a calibrated checkpoint never
            re-initialises it.
    """

    def __init__(self, trunk: nn.Module, cls_score: nn.Linear, copy_from_original: bool):
        super().__init__()
        self.trunk = trunk
        self.cls_score = cls_score
        self.copy_from_original = copy_from_original
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8))

    def forward(self, box_features: torch.Tensor) -> torch.Tensor:
        """(R, C_feat, P, P) pooled features -> (R, C+1) logits."""
        x = self.trunk(box_features)
        return self.cls_score(torch.flatten(x, start_dim=1))

    @torch.no_grad()
    def initialize_from(self, box_head: nn.Module, cls_score: nn.Linear) -> bool:
        """Initialises the head once, after the baseline weights were loaded.

        ``3fc_ft`` copies ``box_head`` and ``cls_score`` (the original classifier); the random
        variants keep their random initialisation. Nothing happens when :attr:`initialized` is
        already set (a calibrated checkpoint was loaded).

        Returns:
            bool: True if the head was initialised now.
        """
        if int(self.initialized) == 1:
            return False
        if self.copy_from_original:
            self.trunk.load_state_dict(box_head.state_dict())
            self.cls_score.load_state_dict(cls_score.state_dict())
            logger.info("SimCal: calibration head initialised from the original box head")
        self.initialized.fill_(1)
        return True


def _linear(in_dim: int, out_dim: int, std: float) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    nn.init.normal_(layer.weight, std=std)
    nn.init.constant_(layer.bias, 0.0)
    return layer


def _mlp(in_dim: int, dims: list) -> nn.Sequential:
    layers: list = [nn.Flatten()]
    for d in dims:
        fc = nn.Linear(in_dim, d)
        nn.init.kaiming_uniform_(fc.weight, a=1)
        nn.init.constant_(fc.bias, 0.0)
        layers += [fc, nn.ReLU(inplace=True)]
        in_dim = d
    return nn.Sequential(*layers)


def _3fc_ft(box_head: nn.Module, in_shape: ShapeSpec, num_classes: int, fc_dim: int,
            cls_in_dim: int) -> CalibrationHead:
    # Same modules as the original box head (any Detectron2 box head) and classifier, filled in
    # with copies of their weights by initialize_from() once the baseline is loaded.
    return CalibrationHead(copy.deepcopy(box_head), _linear(cls_in_dim, num_classes + 1, 0.01),
                           copy_from_original=True)


def _3fc_rand(box_head: nn.Module, in_shape: ShapeSpec, num_classes: int, fc_dim: int,
              cls_in_dim: int) -> CalibrationHead:
    in_dim = in_shape.channels * in_shape.height * in_shape.width
    return CalibrationHead(_mlp(in_dim, [fc_dim, fc_dim]), _linear(fc_dim, num_classes + 1, 0.01),
                           copy_from_original=False)


def _2fc_rand(box_head: nn.Module, in_shape: ShapeSpec, num_classes: int, fc_dim: int,
              cls_in_dim: int) -> CalibrationHead:
    in_dim = in_shape.channels * in_shape.height * in_shape.width
    return CalibrationHead(_mlp(in_dim, [fc_dim]), _linear(fc_dim, num_classes + 1, 0.01),
                           copy_from_original=False)


#: Head variants by name (explicit dispatch; see reference bug B3 in docs/simcal.md).
CALIBRATION_HEADS: Dict[str, Callable[..., CalibrationHead]] = {
    "3fc_ft": _3fc_ft,
    "3fc_rand": _3fc_rand,
    "2fc_rand": _2fc_rand,
}


def build_calibration_head(name: str, box_head: nn.Module, pooled_shape: ShapeSpec,
                           num_classes: int, fc_dim: int, cls_in_dim: int) -> CalibrationHead:
    """Builds the calibration head variant ``name``.

    Args:
        name (str): a key of :data:`CALIBRATION_HEADS`.
        box_head (nn.Module): the detector's original box head (copied by ``3fc_ft``).
        pooled_shape (ShapeSpec): shape of one pooled RoI feature (channels, height, width).
        num_classes (int): C foreground classes (the head outputs C+1 logits).
        fc_dim (int): hidden width of the random variants.
        cls_in_dim (int): input width of the original classifier (output width of ``box_head``).
    """
    if name not in CALIBRATION_HEADS:
        from det_ext.utils.errors import ConfigInputError

        raise ConfigInputError(f"SIMCAL.HEAD: unknown calibration head '{name}' "
                               f"(choose from {sorted(CALIBRATION_HEADS)})")
    return CALIBRATION_HEADS[name](box_head, pooled_shape, num_classes, fc_dim, cls_in_dim)
