# Copyright (c) det_ext authors.
"""MoPro (Momentum Prototypes): classifier + momentum prototypes with online noise cleaning.

Per step: weak view -> (classifier logits, q), strong view -> momentum key k; instance InfoNCE;
prototype logits q . P^T / T; from ``START_CLEAN_EPOCH`` the label is kept if the mixed score
s = alpha softmax(logits) + (1 - alpha) softmax(proto logits) gives s[y] > 1/C, else relabelled to
argmax s when max s > ``PSEUDO_TH``, else the sample is out-of-distribution (dropped from CE,
prototype loss and prototype update). Prototypes: P[y] <- m P[y] + (1 - m) q, then L2-normalised.

Optional (not in the paper, off by default): logit adjustment of the classifier for long-tailed
labels (Menon et al., ICLR 2021): the CE and the cleaning use logits + tau log prior(y), so that the
raw logits estimate a class-balanced posterior.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from .moco import MomentumContrast, concat_all_gather

__all__ = ["clean_labels", "update_prototypes", "MoPro"]


def clean_labels(logits: torch.Tensor, proto_logits: torch.Tensor, target: torch.Tensor,
                 alpha: float = 0.5, pseudo_th: float = 0.8
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MoPro's label correction rule.

    Args:
        logits (Tensor): classifier logits [N, C].
        proto_logits (Tensor): prototype logits [N, C].
        target (Tensor): given labels [N].
        alpha (float): weight of the classifier softmax.
        pseudo_th (float): relabelling threshold on max s.

    Returns:
        (Tensor, Tensor, Tensor): new labels [N], clean mask [N] (kept or relabelled), relabelled
        mask [N]. Samples neither kept nor relabelled are OOD (clean = False).
    """
    num_classes = logits.shape[1]
    s = alpha * F.softmax(logits, dim=1) + (1.0 - alpha) * F.softmax(proto_logits, dim=1)
    keep = s.gather(1, target[:, None]).squeeze(1) > 1.0 / num_classes
    max_s, arg = s.max(dim=1)
    relabel = ~keep & (max_s > pseudo_th)
    new_target = torch.where(relabel, arg, target)
    return new_target, keep | relabel, relabel


@torch.no_grad()
def update_prototypes(prototypes: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                      momentum: float) -> None:
    """Sequential EMA of the class prototypes, then L2 renormalisation (in place).

    Args:
        prototypes (Tensor): [C, dim].
        features (Tensor): [n, dim] embeddings, in order.
        labels (Tensor): [n] classes.
        momentum (float): proto_m.
    """
    for feat, y in zip(features, labels.tolist()):
        prototypes[y] = momentum * prototypes[y] + (1.0 - momentum) * feat
    prototypes.copy_(F.normalize(prototypes, dim=1))


class MoPro(MomentumContrast):
    """MoPro model.

    Args:
        num_classes (int): C (prototypes [C, dim]).
        proto_momentum, w_inst, w_proto, start_clean_epoch, pseudo_th, alpha: spec defaults
            0.999, 1, 1, 11, 0.8, 0.5.
        logit_adjustment (float): tau of the logit adjustment (0: plain CE, as the paper); the
            prior comes from :meth:`set_class_prior`.
        **kwargs: :class:`MomentumContrast` arguments.
    """

    def __init__(self, encoder_q, num_classes: int, proto_momentum: float = 0.999,
                 w_inst: float = 1.0, w_proto: float = 1.0, start_clean_epoch: int = 11,
                 pseudo_th: float = 0.8, alpha: float = 0.5, logit_adjustment: float = 0.0,
                 **kwargs):
        super().__init__(encoder_q, **kwargs)
        self.register_buffer("prototypes", torch.zeros(num_classes, self.queue.shape[0]))
        self.register_buffer("log_prior", torch.zeros(num_classes))
        self.logit_adjustment = logit_adjustment
        self.proto_momentum = proto_momentum
        self.w_inst, self.w_proto = w_inst, w_proto
        self.start_clean_epoch, self.pseudo_th, self.alpha = start_clean_epoch, pseudo_th, alpha

    @torch.no_grad()
    def set_class_prior(self, counts: torch.Tensor) -> None:
        """Sets the label prior of the logit adjustment from per-class label counts [C] (classes
        without labels count as one)."""
        counts = counts.to(self.log_prior).clamp(min=1.0)
        self.log_prior.copy_(torch.log(counts / counts.sum()))

    def forward(self, batch: Dict[str, torch.Tensor], epoch: int = 0) -> Dict[str, torch.Tensor]:
        """Args: batch with ``img_q`` (weak view), ``img_k`` (strong view) [N, 3, H, W] and
        ``target`` [N] (possibly noisy labels).

        Returns: losses ``loss_cls``, ``loss_inst``, ``loss_proto`` (epoch > 0) and the statistics
        ``num_clean``, ``num_relabelled`` (not losses: no gradient).
        """
        out_q, k, loss_inst = self.instance_step(batch["img_q"], batch["img_k"])
        q, target = out_q["embedding"], batch["target"]
        logits = out_q["logits"] + self.logit_adjustment * self.log_prior
        proto_logits = q @ self.prototypes.clone().detach().T / self.temperature
        clean = torch.ones_like(target, dtype=torch.bool)
        stats = {}
        if epoch >= self.start_clean_epoch:
            with torch.no_grad():
                target, clean, relabel = clean_labels(logits.detach(), proto_logits.detach(),
                                                      target, self.alpha, self.pseudo_th)
            stats = {"num_clean": clean.sum().float(), "num_relabelled": relabel.sum().float()}
        zero = logits.sum() * 0.0
        loss_cls = F.cross_entropy(logits[clean], target[clean]) if clean.any() else zero
        losses = {"loss_cls": loss_cls, "loss_inst": self.w_inst * loss_inst}
        if epoch > 0:
            losses["loss_proto"] = self.w_proto * (
                F.cross_entropy(proto_logits[clean], target[clean]) if clean.any() else zero)
        feats = concat_all_gather(q.detach())
        labels, mask = concat_all_gather(target), concat_all_gather(clean)
        update_prototypes(self.prototypes, feats[mask], labels[mask], self.proto_momentum)
        self.enqueue(k)
        losses.update({k_: v.detach() for k_, v in stats.items()})
        return losses
