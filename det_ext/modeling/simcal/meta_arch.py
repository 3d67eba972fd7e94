# Copyright (c) det_ext authors.
"""``SimCalRCNN``: a frozen Mask R-CNN whose training step trains only the calibration head."""
from __future__ import annotations

from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN

from det_ext.utils.errors import ConfigInputError

from .roi_heads import SimCalROIHeads
from .sampling import frozen_rpn_proposals

__all__ = ["SimCalRCNN"]

_CALIB_PREFIX = "roi_heads.calibration_head."


@META_ARCH_REGISTRY.register()
class SimCalRCNN(GeneralizedRCNN):
    """``GeneralizedRCNN`` for SimCal's calibration stage and dual-head inference.

    Every parameter except the calibration head's has ``requires_grad=False``, and every module
    except the calibration head stays in eval mode even under ``model.train()`` (frozen batch-norm
    statistics, test-time RPN behaviour). Parameter names are those of ``GeneralizedRCNN``, so a
    baseline checkpoint loads as it is; a calibrated checkpoint adds
    ``roi_heads.calibration_head.*``.

    In training mode ``forward`` returns ``{"loss_simcal_cls"}`` for a bi-level sampled batch:
    each input dict must carry ``"simcal_class"``, the (contiguous) class sampled for it. In eval
    mode it is ``GeneralizedRCNN``'s inference with the SimCal ROI heads' scoring.
    """

    @configurable
    def __init__(self, *, use_train_proposal_topk: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(self.roi_heads, SimCalROIHeads):
            raise ConfigInputError("MODEL.ROI_HEADS.NAME: SimCalRCNN needs 'SimCalROIHeads', got "
                                   f"'{type(self.roi_heads).__name__}'")
        self.use_train_proposal_topk = use_train_proposal_topk
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith(_CALIB_PREFIX))
        self.train(self.training)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["use_train_proposal_topk"] = cfg.SIMCAL.USE_TRAIN_PROPOSAL_TOPK
        return ret

    def train(self, mode: bool = True) -> "SimCalRCNN":
        """Only the calibration head follows ``mode``; the detector stays in eval mode."""
        super().train(False)
        self.training = mode
        self.roi_heads.calibration_head.train(mode)
        return self

    def trainable_parameters(self) -> List[torch.nn.Parameter]:
        """The calibration head's parameters (the only ones the calibration stage updates)."""
        return list(self.roi_heads.calibration_head.parameters())

    def initialize_calibration_head(self) -> bool:
        """Copies the original box head into a ``3fc_ft`` calibration head (once, after the
        baseline weights were loaded). Returns True if it initialised the head now."""
        return self.roi_heads.initialize_calibration_head()

    def forward(self, batched_inputs: List[dict]) -> Dict[str, torch.Tensor] | list:
        if not self.training:
            return self.inference(batched_inputs)
        missing = [i for i, x in enumerate(batched_inputs) if "simcal_class" not in x]
        if missing:
            raise ValueError("SimCalRCNN is trained on bi-level sampled batches: inputs "
                             f"{missing} have no 'simcal_class' (use SimCalTrainer's loader)")
        with torch.no_grad():
            images = self.preprocess_image(batched_inputs)
            targets = [x["instances"].to(self.device) for x in batched_inputs]
            features = self.backbone(images.tensor)
            proposals = frozen_rpn_proposals(self.proposal_generator, images, features,
                                             self.use_train_proposal_topk)
        return self.roi_heads.calibration_losses(
            features, proposals, targets, [int(x["simcal_class"]) for x in batched_inputs])
