# Copyright (c) det_ext authors.
"""ROI heads with two detection heads (classification + box regression each) on one backbone/RPN.

The two heads have the same architecture and differ by their random initialisation (and, as an
option, by independently sampled RoIs). They are trained on soft labels (``gt_soft_classes``) when
the targets carry them, and their outputs are averaged at test time (``NOISY.TEST_OUTPUT``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import (
    FastRCNNOutputLayers,
    _log_classification_stats,
    fast_rcnn_inference,
)
from detectron2.structures import Instances
from torch import nn

from .correction import CorrectionParams, correct_targets
from .soft_labels import soft_cross_entropy

__all__ = ["DualHeadROIHeads", "SoftLabelFastRCNNOutputLayers"]


class SoftLabelFastRCNNOutputLayers(FastRCNNOutputLayers):
    """``FastRCNNOutputLayers`` whose classification loss uses soft targets when the proposals
    carry ``gt_soft_classes`` (N, K): a foreground proposal's target is its matched box's soft
    label, a background proposal's is one-hot background. Box regression uses ``gt_classes``.
    """

    log_prefix = "fast_rcnn"

    def losses(self, predictions: Tuple[torch.Tensor, torch.Tensor],
               proposals: List[Instances]) -> Dict[str, torch.Tensor]:
        if not proposals or not any(p.has("gt_soft_classes") for p in proposals):
            return super().losses(predictions, proposals)
        scores, deltas = predictions
        k = self.num_classes
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        _log_classification_stats(scores, gt_classes, self.log_prefix)
        soft = cat([p.gt_soft_classes if p.has("gt_soft_classes")
                    else scores.new_zeros((len(p), k)) for p in proposals], dim=0)
        target = scores.new_zeros((len(gt_classes), k + 1))
        fg = gt_classes < k
        target[fg, :k] = soft[fg].to(target.dtype)
        target[~fg, k] = 1.0
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        gt_boxes = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor
                        for p in proposals], dim=0)
        losses = {"loss_cls": soft_cross_entropy(scores, target),
                  "loss_box_reg": self.box_reg_loss(proposal_boxes, gt_boxes, deltas, gt_classes)}
        return {n: v * self.loss_weight.get(n, 1.0) for n, v in losses.items()}


@ROI_HEADS_REGISTRY.register()
class DualHeadROIHeads(StandardROIHeads):
    """``StandardROIHeads`` with a second box head and predictor, and the annotation correction.

    Losses: ``loss_cls``/``loss_box_reg`` (head 1) and ``loss_cls_h2``/``loss_box_reg_h2`` (head 2).
    The correction itself is run by the meta-architecture (before the RPN) through
    :meth:`correct`, after ``warmup_iters`` iterations.
    """

    @configurable
    def __init__(self, *, box_head2: nn.Module, box_predictor2: nn.Module,
                 correction: CorrectionParams, warmup_iters: int = 0,
                 independent_sampling: bool = False, test_output: str = "mean",
                 corrected_heads: Tuple[str, ...] = ("head1", "head2"), **kwargs):
        """
        Args:
            box_head2, box_predictor2: the second detection head (same architecture as the first).
            correction (CorrectionParams): correction hyperparameters.
            warmup_iters (int): iterations before the correction starts.
            independent_sampling (bool): sample the RoIs of each head independently.
            test_output (str): "mean", "head1" or "head2".
            corrected_heads (tuple[str]): heads trained on the corrected annotations; the others
                are trained on the noisy ones ("head1", "head2").
            **kwargs: arguments of ``StandardROIHeads``.
        """
        super().__init__(**kwargs)
        if test_output not in ("mean", "head1", "head2"):
            raise ValueError(f"NOISY.TEST_OUTPUT must be 'mean', 'head1' or 'head2', "
                             f"got {test_output!r}")
        self.box_head2 = box_head2
        self.box_predictor2 = box_predictor2
        self.box_predictor2.log_prefix = "fast_rcnn_h2"
        self.correction = correction
        self.warmup_iters = warmup_iters
        self.independent_sampling = independent_sampling
        self.test_output = test_output
        unknown = set(corrected_heads) - {"head1", "head2"}
        if unknown:
            raise ValueError(f"NOISY.CORRECTED_HEADS: unknown heads {sorted(unknown)}")
        self.corrected_heads = tuple(corrected_heads)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        second = cls._init_box_head(cfg, input_shape)
        ret.update(box_head2=second["box_head"], box_predictor2=second["box_predictor"],
                   correction=CorrectionParams.from_cfg(cfg),
                   warmup_iters=cfg.NOISY.WARMUP_ITERS,
                   independent_sampling=cfg.NOISY.INDEPENDENT_SAMPLING,
                   test_output=cfg.NOISY.TEST_OUTPUT,
                   corrected_heads=tuple(cfg.NOISY.CORRECTED_HEADS))
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = SoftLabelFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret

    def heads(self) -> List[Tuple[nn.Module, nn.Module]]:
        """[(box_head, box_predictor), (box_head2, box_predictor2)]."""
        return [(self.box_head, self.box_predictor), (self.box_head2, self.box_predictor2)]

    def correction_active(self, iteration: int) -> bool:
        """Whether the correction runs at this training iteration (after the warm-up)."""
        c = self.correction
        return iteration >= self.warmup_iters and (c.box_correction or c.label_correction
                                                   or c.box_refinement)

    def correct(self, features: Dict[str, torch.Tensor], targets: List[Instances],
                rpn: Optional[nn.Module] = None) -> Tuple[List[Instances], Dict[str, float]]:
        """Corrects the boxes and labels of ``targets`` (see :func:`correct_targets`)."""
        return correct_targets(self, features, targets, self.correction, rpn)

    def forward(self, images, features, proposals, targets=None):
        if not self.training:
            return super().forward(images, features, proposals, targets)
        del images
        per_head = [targets if name in self.corrected_heads else _noisy_targets(targets)
                    for name in ("head1", "head2")]
        sampled = self.label_and_sample_proposals(proposals, per_head[0])
        sampled2 = sampled
        if self.independent_sampling or per_head[1] is not per_head[0]:
            sampled2 = self.label_and_sample_proposals(proposals, per_head[1])
        losses = self._box_losses(features, sampled, sampled2)
        losses.update(self._forward_mask(features, sampled))
        losses.update(self._forward_keypoint(features, sampled))
        return sampled, losses

    def _box_losses(self, features, proposals, proposals2) -> Dict[str, torch.Tensor]:
        feats = [features[f] for f in self.box_in_features]
        losses: Dict[str, torch.Tensor] = {}
        pooled = self.box_pooler(feats, [p.proposal_boxes for p in proposals])
        for k, ((head, pred), props) in enumerate(zip(self.heads(), (proposals, proposals2))):
            if props is not proposals:  # independently sampled RoIs: pool them too
                pooled = self.box_pooler(feats, [p.proposal_boxes for p in props])
            x = head(pooled)
            suffix = "" if k == 0 else "_h2"
            losses.update({f"{n}{suffix}": v for n, v in pred.losses(pred(x), props).items()})
        return losses

    def _forward_box(self, features, proposals):
        if self.training:  # only reached through StandardROIHeads internals
            return self._box_losses(features, proposals, proposals)
        feats = [features[f] for f in self.box_in_features]
        x = self.box_pooler(feats, [p.proposal_boxes for p in proposals])
        (head1, pred1), (head2, pred2) = self.heads()
        if self.test_output == "head1":
            return pred1.inference(pred1(head1(x)), proposals)[0]
        if self.test_output == "head2":
            return pred2.inference(pred2(head2(x)), proposals)[0]
        o1, o2 = pred1(head1(x)), pred2(head2(x))
        boxes = [0.5 * (a + b) for a, b in zip(pred1.predict_boxes(o1, proposals),
                                               pred2.predict_boxes(o2, proposals))]
        scores = [0.5 * (a + b) for a, b in zip(pred1.predict_probs(o1, proposals),
                                                pred2.predict_probs(o2, proposals))]
        return fast_rcnn_inference(boxes, scores, [p.image_size for p in proposals],
                                   pred1.test_score_thresh, pred1.test_nms_thresh,
                                   pred1.test_topk_per_image)[0]


def _noisy_targets(targets: List[Instances]) -> List[Instances]:
    """The annotations before correction (``gt_noisy_boxes`` / ``gt_noisy_classes``), or
    ``targets`` itself when they were not corrected."""
    if not targets or not targets[0].has("gt_noisy_boxes"):
        return targets
    return [Instances(t.image_size, gt_boxes=t.gt_noisy_boxes, gt_classes=t.gt_noisy_classes)
            for t in targets]
