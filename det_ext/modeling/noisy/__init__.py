# Copyright (c) det_ext authors.
"""Noise-resistant detection with noisy annotations: dual detection heads with box and label
correction alternating with training (a reconstruction; see docs/noisy_boxes.md).

Registers ``DualHeadROIHeads`` (ROI_HEADS_REGISTRY), ``NoisyGeneralizedRCNN``
(META_ARCH_REGISTRY) and ``NoisyTrainer`` (det_ext TRAINER_REGISTRY).
"""
from .correction import CorrectionParams, correct_boxes_step1, correct_targets
from .correction import distill_labels_and_boxes, rpn_box_objectness
from .dual_head import DualHeadROIHeads, SoftLabelFastRCNNOutputLayers
from .meta_arch import NoisyGeneralizedRCNN
from .pooling import bilinear_box_pool
from .soft_labels import discrepancy, foreground_distribution, sharpen, soft_cross_entropy
from .trainer import NoisyDatasetMapper, NoisyTrainer

__all__ = [
    "CorrectionParams", "correct_boxes_step1", "correct_targets", "distill_labels_and_boxes",
    "rpn_box_objectness", "DualHeadROIHeads", "SoftLabelFastRCNNOutputLayers",
    "NoisyGeneralizedRCNN", "bilinear_box_pool", "discrepancy", "foreground_distribution",
    "sharpen", "soft_cross_entropy", "NoisyDatasetMapper", "NoisyTrainer",
]
