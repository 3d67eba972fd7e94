# Copyright (c) det_ext authors.
"""``NoisyGeneralizedRCNN``: Detectron2's R-CNN with annotation correction alternating with
training (after the warm-up, every iteration corrects its batch's ground truth with the current
model before the RPN and the ROI heads are trained on the corrected boxes and soft labels)."""
from __future__ import annotations

import math
from typing import Dict, List

import torch
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.utils.events import get_event_storage

__all__ = ["NoisyGeneralizedRCNN"]


@META_ARCH_REGISTRY.register()
class NoisyGeneralizedRCNN(GeneralizedRCNN):
    """GeneralizedRCNN whose ROI heads (a :class:`DualHeadROIHeads`) correct the ground truth.

    Logs ``noisy/iou_noisy``, ``noisy/iou_step1``, ``noisy/iou_corrected`` (mean IoU with the
    clean boxes) and ``noisy/label_acc_noisy`` / ``noisy/label_acc_corrected`` when the inputs carry
    the clean annotations (``gt_clean_boxes``, ``gt_clean_classes``, see ``NoisyDatasetMapper``).
    """

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        features = self.backbone(images.tensor)
        storage = get_event_storage()
        if self.roi_heads.correction_active(storage.iter):
            gt_instances, stats = self.roi_heads.correct(features, gt_instances,
                                                         self.proposal_generator)
            for name, value in stats.items():
                if not math.isnan(value):
                    storage.put_scalar(f"noisy/{name}", value)
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        losses = {}
        losses.update(detector_losses)
        losses.update(proposal_losses)
        return losses
