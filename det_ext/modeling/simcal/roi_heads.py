# Copyright (c) det_ext authors.
"""ROI heads carrying the original and the SimCal calibration classifier."""
from __future__ import annotations

import functools
import logging
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import log_first_n

from det_ext.utils.errors import ConfigInputError

from .dual import INFERENCE_MODES, combine_scores, low_shot_classes
from .heads import CalibrationHead, build_calibration_head
from .sampling import compose_calibration_batch, label_proposals

__all__ = ["SimCalROIHeads"]


@ROI_HEADS_REGISTRY.register()
class SimCalROIHeads(StandardROIHeads):
    """``StandardROIHeads`` plus a SimCal calibration head.

    At test time the class scores come from the original head, the calibration head or the dual
    rule (``inference_mode``); boxes always come from the original box regression, and the mask
    head runs on the resulting detections. Training this module as usual trains the original
    heads only; the calibration head is trained by :meth:`calibration_losses` (the calibration
    stage, see :class:`~det_ext.modeling.simcal.SimCalRCNN`).
    """

    @configurable
    def __init__(self, *, calibration_head: CalibrationHead, inference_mode: str = "dual",
                 low_shot: Union[torch.Tensor, Callable[[], torch.Tensor], None] = None,
                 calib_iou_threshold: float = 0.5, calib_rois_per_image: int = 512,
                 calib_positive_fraction: float = 0.25, calib_negative_ratio: float = 1.0,
                 **kwargs):
        """
        Args:
            calibration_head (CalibrationHead): the new classifier on pooled box features.
            inference_mode (str): "dual", "calibrated" or "original".
            low_shot (Tensor or callable): bool (C,) classes taking the calibrated score in
                "dual", or a callable returning it (evaluated lazily, once).
            calib_iou_threshold, calib_rois_per_image, calib_positive_fraction,
            calib_negative_ratio: proposal-level sampling of the calibration stage.
            kwargs: arguments of ``StandardROIHeads``.
        """
        super().__init__(**kwargs)
        if inference_mode not in INFERENCE_MODES:
            raise ConfigInputError(f"SIMCAL.INFERENCE_MODE: unknown mode '{inference_mode}' "
                                   f"(choose from {list(INFERENCE_MODES)})")
        self.calibration_head = calibration_head
        self.inference_mode = inference_mode
        self._low_shot_source = low_shot
        self._low_shot: Optional[torch.Tensor] = None
        self.calib_iou_threshold = calib_iou_threshold
        self.calib_rois_per_image = calib_rois_per_image
        self.calib_positive_fraction = calib_positive_fraction
        self.calib_negative_ratio = calib_negative_ratio

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        res = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        pooled = ShapeSpec(channels=input_shape[in_features[0]].channels, height=res, width=res)
        ret["calibration_head"] = build_calibration_head(
            cfg.SIMCAL.HEAD, ret["box_head"], pooled, cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            cfg.SIMCAL.HEAD_FC_DIM or cfg.MODEL.ROI_BOX_HEAD.FC_DIM,
            ret["box_predictor"].cls_score.in_features)
        ret["inference_mode"] = cfg.SIMCAL.INFERENCE_MODE
        # Lazy: class statistics are read from the training metadata only when "dual" first runs.
        ret["low_shot"] = functools.partial(low_shot_classes, list(cfg.DATASETS.TRAIN),
                                            cfg.SIMCAL.DUAL_THRESHOLD, cfg.SIMCAL.DUAL_STATISTIC)
        ret["calib_iou_threshold"] = cfg.SIMCAL.ROI_IOU_THRESHOLD
        ret["calib_rois_per_image"] = cfg.SIMCAL.ROI_BATCH_SIZE_PER_IMAGE
        ret["calib_positive_fraction"] = cfg.SIMCAL.ROI_POSITIVE_FRACTION
        ret["calib_negative_ratio"] = cfg.SIMCAL.NEGATIVE_TO_POSITIVE_RATIO
        return ret

    @property
    def low_shot(self) -> torch.Tensor:
        """bool (C,): the classes that take the calibrated score in "dual" mode."""
        if self._low_shot is None:
            src = self._low_shot_source
            mask = src() if callable(src) else src
            if mask is None:
                raise ValueError("SimCalROIHeads: no low-shot class set was given for 'dual'")
            mask = torch.as_tensor(mask, dtype=torch.bool)
            if mask.shape != (self.num_classes,):
                raise ValueError(f"low-shot class mask has shape {tuple(mask.shape)}, "
                                 f"expected ({self.num_classes},)")
            self._low_shot = mask
        return self._low_shot

    def initialize_calibration_head(self) -> bool:
        """Initialises the calibration head from the (loaded) original box head, once."""
        return self.calibration_head.initialize_from(self.box_head, self.box_predictor.cls_score)

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        if self.training or self.inference_mode == "original":
            return super()._forward_box(features, proposals)
        if int(self.calibration_head.initialized) == 0:
            log_first_n(logging.WARNING, "SimCal: the calibration head was never initialised "
                        "or trained (a baseline checkpoint?); '%s' scores are not calibrated"
                        % self.inference_mode, n=1)
        feats = [features[f] for f in self.box_in_features]
        pooled = self.box_pooler(feats, [x.proposal_boxes for x in proposals])  # (R, Cf, P, P)
        predictions = self.box_predictor(self.box_head(pooled))
        cal_probs = F.softmax(self.calibration_head(pooled), dim=-1)  # (R, C+1)
        boxes = self.box_predictor.predict_boxes(predictions, proposals)
        probs = self.box_predictor.predict_probs(predictions, proposals)
        cal_probs = cal_probs.split([len(p) for p in proposals])
        low_shot = self.low_shot if self.inference_mode == "dual" else None
        scores = [combine_scores(p, q, low_shot, self.inference_mode)
                  for p, q in zip(probs, cal_probs)]
        pred = self.box_predictor
        instances, _ = fast_rcnn_inference(boxes, scores, [x.image_size for x in proposals],
                                           pred.test_score_thresh, pred.test_nms_thresh,
                                           pred.test_topk_per_image)
        return instances

    def calibration_losses(self, features: Dict[str, torch.Tensor], proposals: List[Instances],
                           targets: List[Instances],
                           sampled_classes: Sequence[int]) -> Dict[str, torch.Tensor]:
        """Cross-entropy of the calibration head on one bi-level sampled batch.

        Args:
            features (dict[str, Tensor]): frozen backbone features of the N images.
            proposals (list[Instances]): frozen RPN proposals per image.
            targets (list[Instances]): ground truth per image.
            sampled_classes (list[int]): the class sampled for each image (contiguous id).

        Returns:
            dict: ``{"loss_simcal_cls": scalar}``.
        """
        with torch.no_grad():
            labelled = label_proposals(proposals, targets, self.num_classes,
                                       self.calib_iou_threshold, self.calib_rois_per_image,
                                       self.calib_positive_fraction, add_gt=True)
            keep = compose_calibration_batch([lab for _, lab in labelled], sampled_classes,
                                             self.num_classes, self.calib_negative_ratio)
            boxes = [b[k] for (b, _), k in zip(labelled, keep)]
            labels = torch.cat([lab[k] for (_, lab), k in zip(labelled, keep)])
            feats = [features[f] for f in self.box_in_features]
            pooled = self.box_pooler(feats, boxes)
        logits = self.calibration_head(pooled)
        if len(labels) == 0:
            loss = logits.sum() * 0.0
        else:
            loss = F.cross_entropy(logits, labels)
        try:
            storage = get_event_storage()
        except AssertionError:
            storage = None
        if storage is not None and len(labels):
            num_fg = int((labels < self.num_classes).sum())
            storage.put_scalar("simcal/num_fg", num_fg)
            storage.put_scalar("simcal/num_bg", len(labels) - num_fg)
            storage.put_scalar("simcal/cls_accuracy",
                               float((logits.argmax(1) == labels).float().mean()))
        return {"loss_simcal_cls": loss}
