# Copyright (c) det_ext authors.
"""Soft labels: temperature sharpening, the heads' discrepancy and the soft-target cross-entropy."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["sharpen", "discrepancy", "soft_cross_entropy", "foreground_distribution"]


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``sharpen(p)_c = p_c^(1/T) / sum_k p_k^(1/T)`` along the last dimension.

    Args:
        probs (Tensor): (..., K) distributions.
        temperature (float): T > 0; T < 1 sharpens, T = 1 is the identity, T > 1 flattens.

    Returns:
        Tensor: (..., K) distributions.
    """
    if temperature <= 0:
        raise ValueError(f"sharpening temperature must be positive, got {temperature}")
    # In log space for stability: softmax(log p / T).
    return torch.softmax(torch.log(probs.clamp_min(1e-12)) / temperature, dim=-1)


def foreground_distribution(probs: torch.Tensor) -> torch.Tensor:
    """Renormalises (N, K + 1) probabilities (background last) over the K foreground classes."""
    fg = probs[:, :-1]
    return fg / fg.sum(dim=1, keepdim=True).clamp_min(1e-12)


def discrepancy(p1: torch.Tensor, p2: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Per-row discrepancy between two (N, C) distributions -> (N,).

    Args:
        kind (str): "l1" (sum |p1 - p2|), "l2" (sum (p1 - p2)^2) or "js" (Jensen-Shannon).
    """
    if kind == "l1":
        return (p1 - p2).abs().sum(dim=1)
    if kind == "l2":
        return (p1 - p2).pow(2).sum(dim=1)
    if kind == "js":
        m = (0.5 * (p1 + p2)).clamp_min(1e-12)
        kl1 = (p1 * (p1.clamp_min(1e-12).log() - m.log())).sum(dim=1)
        kl2 = (p2 * (p2.clamp_min(1e-12).log() - m.log())).sum(dim=1)
        return 0.5 * (kl1 + kl2)
    raise ValueError(f"unknown discrepancy '{kind}' (expected 'l1', 'l2' or 'js')")


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_c t_c log softmax(z)_c``; (N, C) logits and targets -> scalar.

    Equals ``F.cross_entropy`` for one-hot targets; 0 (keeping the graph) for N = 0.
    """
    if logits.numel() == 0:
        return logits.sum() * 0.0
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
