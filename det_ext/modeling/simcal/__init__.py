# Copyright (c) det_ext authors.
"""SimCal: bi-level sampled calibration heads and dual-head inference (arXiv 2007.11978).

Registers ``SimCalROIHeads`` (ROI_HEADS_REGISTRY), ``SimCalRCNN`` (META_ARCH_REGISTRY) and the
``SimCalTrainer`` (det_ext.engine.TRAINER_REGISTRY). See docs/simcal.md.
"""
from .data import BiLevelClassBalancedDataset, build_simcal_train_loader, class_to_image_index
from .dual import INFERENCE_MODES, combine_scores, low_shot_classes, resolve_dual_threshold
from .heads import CALIBRATION_HEADS, CalibrationHead, build_calibration_head
from .meta_arch import SimCalRCNN
from .roi_heads import SimCalROIHeads
from .sampling import compose_calibration_batch, frozen_rpn_proposals, label_proposals

from det_ext.engine import simcal_trainer as _simcal_trainer  # noqa: E402,F401  (registers it)

__all__ = [
    "BiLevelClassBalancedDataset", "build_simcal_train_loader", "class_to_image_index",
    "INFERENCE_MODES", "combine_scores", "low_shot_classes", "resolve_dual_threshold",
    "CALIBRATION_HEADS", "CalibrationHead", "build_calibration_head", "SimCalRCNN",
    "SimCalROIHeads", "compose_calibration_batch", "frozen_rpn_proposals", "label_proposals",
]
