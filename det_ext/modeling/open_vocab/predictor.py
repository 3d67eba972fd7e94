# Copyright (c) det_ext authors.
"""Fast R-CNN box predictor whose classifier is a frozen matrix of class text embeddings.

RoI features are projected to the text-embedding size by a learned linear layer; the class logits
are dot products with the (frozen) class-name embeddings, optionally after L2 normalisation of both
sides and division by a temperature. Background sits at the last index, as Detectron2 expects, with
a zero embedding (logit 0, as PB-OVD) or a learned one, and its cross-entropy weight is
``OPEN_VOCAB.BG_LOSS_WEIGHT`` (PB-OVD: 0.2). The embedding matrix is a non-persistent buffer:
checkpoints do not depend on the vocabulary, which :meth:`set_class_embeddings` swaps.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, _log_classification_stats
from detectron2.structures import Instances
from torch import nn

from .embeddings import ClassEmbeddingError

__all__ = ["TextEmbeddingClassifier", "OpenVocabOutputLayers", "BACKGROUND_MODES"]

BACKGROUND_MODES = ("zero", "learned")


class TextEmbeddingClassifier(nn.Module):
    """Classifier ``logits = proj(x) @ [E; e_bg]^T`` over a frozen class-embedding matrix.

    Args:
        input_size (int): RoI feature size C.
        class_embeddings (Tensor): [K, D] class text embeddings (frozen).
        normalize (bool): L2-normalise projected features and embeddings (cosine logits).
        temperature (float): with ``normalize``, logits are divided by it (0.02 -> scale 50).
        background (str): "zero" (background logit is 0 without normalisation; its embedding is
            the zero vector) or "learned" (a learned D-vector, treated like a class embedding).
    """

    def __init__(self, input_size: int, class_embeddings: torch.Tensor, normalize: bool = False,
                 temperature: float = 0.02, background: str = "zero"):
        super().__init__()
        if background not in BACKGROUND_MODES:
            raise ValueError(f"background must be one of {BACKGROUND_MODES}, got {background!r}")
        if normalize and not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        dim = int(class_embeddings.shape[1])
        self.embed_dim = dim
        self.normalize = normalize
        self.temperature = float(temperature)
        self.background = background
        # PB-OVD's emb_pred: Linear(C, D), init N(0, 0.01), bias 0.
        self.proj = nn.Linear(input_size, dim)
        nn.init.normal_(self.proj.weight, std=0.01)
        nn.init.constant_(self.proj.bias, 0.0)
        if background == "learned":
            self.bg_embedding = nn.Parameter(torch.randn(dim) * 0.01)
        else:
            self.register_parameter("bg_embedding", None)
        self.register_buffer("class_embeddings", torch.empty(0, dim), persistent=False)
        self.set_class_embeddings(class_embeddings)

    @property
    def num_classes(self) -> int:
        return int(self.class_embeddings.shape[0])

    def set_class_embeddings(self, embeddings: torch.Tensor) -> None:
        """Replaces the class-embedding matrix ([K', D], same D)."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embed_dim:
            raise ClassEmbeddingError(
                f"class embeddings of shape {tuple(embeddings.shape)} do not fit a classifier with "
                f"embedding dimension {self.embed_dim}")
        self.class_embeddings = embeddings.detach().to(self.proj.weight).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: [N, C] RoI features. Returns: [N, K + 1] logits, background last."""
        z = self.proj(x)
        emb = self.class_embeddings
        if self.normalize:
            z = F.normalize(z, dim=1)
            emb = F.normalize(emb, dim=1)
        logits = z @ emb.t()
        if self.bg_embedding is None:
            bg = z.new_zeros(z.shape[0], 1)
        else:
            bg_emb = F.normalize(self.bg_embedding, dim=0) if self.normalize else self.bg_embedding
            bg = (z @ bg_emb)[:, None]
        logits = torch.cat([logits, bg], dim=1)
        if self.normalize:
            logits = logits / self.temperature
        return logits


class OpenVocabOutputLayers(FastRCNNOutputLayers):
    """``FastRCNNOutputLayers`` with a :class:`TextEmbeddingClassifier` as ``cls_score``.

    Args (in addition to ``FastRCNNOutputLayers``'; ``num_classes`` comes from the embeddings):
        class_embeddings (Tensor): [K, D] class text embeddings of the training vocabulary.
        normalize, temperature, background: see :class:`TextEmbeddingClassifier`.
        bg_loss_weight (float): cross-entropy weight of background RoIs (classes weigh 1); the
            weighted sum is divided by the number of sampled RoIs, as PB-OVD.
        freeze_projection (bool): do not train the feature-to-embedding projection (PB-OVD's
            fine-tuning stage).
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, class_embeddings: torch.Tensor,
                 normalize: bool = False, temperature: float = 0.02, background: str = "zero",
                 bg_loss_weight: float = 0.2, freeze_projection: bool = False, **kwargs):
        num_classes = int(class_embeddings.shape[0])
        super().__init__(input_shape, num_classes=num_classes, **kwargs)
        if self.use_sigmoid_ce or self.use_fed_loss:
            raise ValueError("OpenVocabOutputLayers uses softmax cross-entropy; "
                             "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE / USE_FED_LOSS must be False")
        if bg_loss_weight < 0:
            raise ValueError(f"bg_loss_weight must be >= 0, got {bg_loss_weight}")
        input_size = self.cls_score.in_features
        self.cls_score = TextEmbeddingClassifier(input_size, class_embeddings, normalize,
                                                 temperature, background)
        self.bg_loss_weight = float(bg_loss_weight)
        self.cls_agnostic_bbox_reg = self.bbox_pred.out_features == len(
            self.box2box_transform.weights)
        if freeze_projection:
            for p in self.cls_score.proj.parameters():
                p.requires_grad_(False)

    @classmethod
    def from_config(  # type: ignore[override]
            cls, cfg, input_shape, class_embeddings: torch.Tensor):
        ret = super().from_config(cfg, input_shape)
        ret.pop("num_classes")
        ov = cfg.OPEN_VOCAB
        ret.update(class_embeddings=class_embeddings, normalize=ov.NORMALIZE,
                   temperature=ov.TEMPERATURE, background=ov.BACKGROUND,
                   bg_loss_weight=ov.BG_LOSS_WEIGHT, freeze_projection=ov.FREEZE_PROJECTION)
        return ret

    @property
    def embed_dim(self) -> int:
        return self.cls_score.embed_dim

    def set_class_embeddings(self, embeddings: torch.Tensor) -> None:
        """Swaps the vocabulary: [K', D] embeddings; ``num_classes`` becomes K'.

        Raises:
            ClassEmbeddingError: wrong dimension, or a different class count with class-specific
                box regression (whose outputs are tied to the training classes).
        """
        if not self.cls_agnostic_bbox_reg and embeddings.shape[0] != self.num_classes:
            raise ClassEmbeddingError(
                f"cannot change the vocabulary from {self.num_classes} to {embeddings.shape[0]} "
                "classes with class-specific box regression (train with "
                "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True)")
        self.cls_score.set_class_embeddings(embeddings)
        self.num_classes = int(embeddings.shape[0])

    def class_weights(self, device: torch.device) -> torch.Tensor:
        """[K + 1] cross-entropy weights: 1 per class, ``bg_loss_weight`` for background (last)."""
        w = torch.ones(self.num_classes + 1, device=device)
        w[-1] = self.bg_loss_weight
        return w

    def losses(self, predictions: Tuple[torch.Tensor, torch.Tensor],
               proposals: List[Instances]) -> Dict[str, torch.Tensor]:
        """Weighted softmax CE (sum over RoIs / number of RoIs) and Detectron2's box loss."""
        scores, proposal_deltas = predictions
        gt_classes = (cat([p.gt_classes for p in proposals], dim=0) if len(proposals)
                      else torch.empty(0, dtype=torch.long, device=scores.device))
        _log_classification_stats(scores, gt_classes)
        if len(proposals):
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            gt_boxes = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor
                            for p in proposals], dim=0)
        else:
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=proposal_deltas.device)
        if gt_classes.numel():
            loss_cls = F.cross_entropy(scores, gt_classes, weight=self.class_weights(scores.device),
                                       reduction="sum") / gt_classes.numel()
        else:
            loss_cls = scores.sum() * 0.0
        losses = {"loss_cls": loss_cls,
                  "loss_box_reg": self.box_reg_loss(proposal_boxes, gt_boxes, proposal_deltas,
                                                    gt_classes)}
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}
