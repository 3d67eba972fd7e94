# Copyright (c) det_ext authors.
"""Linear probe: a linear classifier trained on frozen pooled features of training samples and
evaluated on held-out samples (overall, class-balanced and tail-class accuracy), with all the
training samples or, as in PCL's low-shot evaluation, k of each class."""
from __future__ import annotations

import logging
import statistics
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["train_linear_probe", "probe_accuracy", "tail_classes", "low_shot_indices",
           "low_shot_probe", "ACCURACY_KEYS"]

logger = logging.getLogger(__name__)

# the accuracies (percent) that probe_accuracy reports; "tail_acc" only when given tail classes
ACCURACY_KEYS = ("acc", "balanced_acc", "tail_acc")


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


def low_shot_indices(labels: torch.Tensor, shots: int, generator: torch.Generator
                     ) -> torch.Tensor:
    """``shots`` samples of every class present in ``labels`` (all of a class that has fewer),
    drawn uniformly without replacement.

    Args:
        labels (Tensor): [N] classes.

    Returns:
        Tensor: [sum_c min(shots, n_c)] indices into ``labels``, grouped by class.
    """
    if shots < 1:
        raise ValueError(f"low-shot probe: shots must be at least 1, got {shots}")
    picked = []
    for c in labels.unique().tolist():
        members = torch.nonzero(labels == c).flatten()
        picked.append(members[torch.randperm(len(members), generator=generator)[:shots]])
    return torch.cat(picked)


def low_shot_probe(train_feats: torch.Tensor, train_labels: torch.Tensor,
                   val_feats: torch.Tensor, val_labels: torch.Tensor, num_classes: int,
                   shots: Sequence[int] = (1, 2, 4, 8, 16), draws: int = 5, seed: int = 0,
                   tail: Optional[torch.Tensor] = None) -> Dict[str, Dict[str, float]]:
    """Linear probes trained on k samples per class, averaged over random draws of the samples
    (the low-shot protocol of PCL, Li et al., ICLR 2021: k in 1-16, 5 draws), each evaluated on
    all of ``val_feats``.

    Draw ``d`` of every k uses a generator seeded with ``seed + d``, so that two encoders probed
    with the same seed see the same training samples.

    Args:
        train_feats (Tensor): [N, d] frozen features of the training samples.
        train_labels (Tensor): [N] their classes.
        val_feats (Tensor): [M, d] frozen features of the evaluation samples.
        val_labels (Tensor): [M] their classes.

    Returns:
        ``{str(k): {"acc", "balanced_acc", "tail_acc", "acc_std", "num_train_samples"}}``, the
        means over the draws (percent) and the sample standard deviation of ``acc``.
    """
    if draws < 1:
        raise ValueError(f"low-shot probe: draws must be at least 1, got {draws}")
    out: Dict[str, Dict[str, float]] = {}
    for k in shots:
        results = []
        for draw in range(draws):
            idx = low_shot_indices(train_labels, k, torch.Generator().manual_seed(seed + draw))
            clf = train_linear_probe(train_feats[idx], train_labels[idx], num_classes, seed=seed)
            results.append(probe_accuracy(clf, val_feats, val_labels, tail))
        metrics = [m for m in ACCURACY_KEYS if m in results[0]]
        out[str(k)] = {m: statistics.fmean(r[m] for r in results) for m in metrics}
        if draws > 1:
            out[str(k)]["acc_std"] = statistics.stdev(r["acc"] for r in results)
        out[str(k)]["num_train_samples"] = len(idx)
        logger.info("low-shot probe, %d per class: %s", k, out[str(k)])
    return out
