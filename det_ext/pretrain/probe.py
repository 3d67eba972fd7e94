# Copyright (c) det_ext authors.
"""Linear probe: a linear classifier trained on frozen pooled features of training samples and
evaluated on held-out samples (overall, class-balanced and tail-class accuracy)."""
from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["train_linear_probe", "probe_accuracy", "tail_classes"]

logger = logging.getLogger(__name__)


def tail_classes(class_frequency: Optional[Sequence[str]], groups: Sequence[str] = ("r", "c")
                 ) -> torch.Tensor:
    """Ids of the classes whose LVIS frequency group is in ``groups`` (LT-Shapes: 'r' < 10 training
    images, 'c' 10-100, 'f' > 100)."""
    if not class_frequency:
        raise ValueError("tail classes need the datasets' class_frequency metadata")
    return torch.tensor([i for i, f in enumerate(class_frequency) if f in groups],
                        dtype=torch.long)


def train_linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, num_classes: int,
                       epochs: int = 300, lr: float = 0.05, weight_decay: float = 1e-4,
                       seed: int = 0, balanced: bool = True) -> torch.nn.Linear:
    """Multinomial logistic regression on standardised features (full-batch Adam).

    With ``balanced`` the cross-entropy weights each class by 1 / its training count (normalised
    to mean 1 over present classes), so that the probe measures how separable the tail classes
    are rather than the training prior.

    Args:
        train_feats (Tensor): [N, d] frozen features.
        train_labels (Tensor): [N] classes.

    Returns:
        nn.Linear: classifier whose input is standardised with the training mean/std
        (stored as attributes ``mean`` and ``std``).
    """
    torch.manual_seed(seed)
    mean, std = train_feats.mean(0), train_feats.std(0).clamp_min(1e-6)
    x = (train_feats - mean) / std
    clf = torch.nn.Linear(x.shape[1], num_classes)
    weight = None
    if balanced:
        counts = torch.bincount(train_labels, minlength=num_classes).float()
        weight = torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))
        weight = weight * (counts > 0).sum() / weight.sum()
    opt = torch.optim.Adam(clf.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in range(epochs):
        opt.zero_grad()
        loss = F.cross_entropy(clf(x), train_labels, weight=weight)
        loss.backward()
        opt.step()
        sched.step()
    clf.mean, clf.std = mean, std
    return clf


@torch.no_grad()
def probe_accuracy(clf: torch.nn.Linear, feats: torch.Tensor, labels: torch.Tensor,
                   tail: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """Accuracy (percent) overall, class-balanced and on samples of the ``tail`` classes.

    ``balanced_acc`` is the mean over the classes present in ``labels`` of their accuracy: the
    accuracy on a class-balanced evaluation set (the ImageNet-LT protocol), where the long-tailed
    ``acc`` is dominated by the head classes.
    """
    pred = clf((feats - clf.mean) / clf.std).argmax(1)
    correct = (pred == labels).float()
    classes, inverse = labels.unique(return_inverse=True)
    per_class = torch.zeros(len(classes)).index_add_(0, inverse, correct) / \
        torch.bincount(inverse, minlength=len(classes)).float()
    out = {"acc": 100.0 * float(correct.mean()), "balanced_acc": 100.0 * float(per_class.mean())}
    if tail is not None and len(tail):
        mask = torch.isin(labels, tail)
        out["tail_acc"] = 100.0 * float(correct[mask].mean()) if mask.any() else float("nan")
        out["num_tail_samples"] = int(mask.sum())
    out["num_samples"] = int(len(labels))
    return out
