# Copyright (c) det_ext authors.
"""RoI pooling that is differentiable with respect to the box coordinates.

torchvision's ``roi_align`` (and Detectron2's ``ROIAlign``) return no gradient for the boxes. This
pooler samples the feature map with ``grid_sample`` at the same points as ``ROIAlign(aligned=True)``
with a fixed ``sampling_ratio`` and averages them per bin, so the pooled features are a (piecewise)
bilinear function of the box coordinates. Inside the image it equals ``roi_align`` exactly.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F

__all__ = ["bilinear_box_pool"]


def bilinear_box_pool(features: Sequence[torch.Tensor], boxes: torch.Tensor,
                      batch_index: torch.Tensor, levels: torch.Tensor, scales: Sequence[float],
                      output_size: int, sampling_ratio: int = 2) -> torch.Tensor:
    """Pools a feature window for each box, differentiably in the boxes and the features.

    Args:
        features (list[Tensor]): L feature maps, each (B, C, H_l, W_l).
        boxes (Tensor): (N, 4) boxes XYXY in input-image pixels (may require grad).
        batch_index (Tensor): (N,) image index of each box in [0, B).
        levels (Tensor): (N,) feature level index of each box in [0, L).
        scales (list[float]): L scales, feature size / image size (1 / stride).
        output_size (int): P, the pooled side.
        sampling_ratio (int): S, bilinear samples per bin side (> 0).

    Returns:
        Tensor: (N, C, P, P) pooled features.
    """
    if sampling_ratio <= 0:
        raise ValueError(f"sampling_ratio must be positive, got {sampling_ratio}")
    n = boxes.shape[0]
    channels = features[0].shape[1]
    s = output_size * sampling_ratio
    if n == 0:
        return boxes.new_zeros((0, channels, output_size, output_size))
    # Relative positions of the s sample points along each side, in (0, 1).
    t = (torch.arange(s, device=boxes.device, dtype=boxes.dtype) + 0.5) / s
    chunks: List[torch.Tensor] = []
    order: List[torch.Tensor] = []
    for lvl, feat in enumerate(features):
        h, w = feat.shape[-2:]
        scale = float(scales[lvl])
        for b in torch.unique(batch_index[levels == lvl]).tolist():
            idx = torch.nonzero((levels == lvl) & (batch_index == b), as_tuple=True)[0]
            bx = boxes[idx]
            xs = bx[:, 0:1] + (bx[:, 2:3] - bx[:, 0:1]) * t  # (n, s) image pixels
            ys = bx[:, 1:2] + (bx[:, 3:4] - bx[:, 1:2]) * t
            # ROIAlign(aligned=True) samples feature index x * scale - 0.5, which grid_sample with
            # align_corners=False reaches at normalised coordinate 2 * x * scale / W - 1.
            gx = 2.0 * xs * scale / w - 1.0
            gy = 2.0 * ys * scale / h - 1.0
            m = len(idx)
            grid = torch.stack([gx[:, None, :].expand(m, s, s), gy[:, :, None].expand(m, s, s)],
                               dim=-1).reshape(1, m * s, s, 2)
            sampled = F.grid_sample(feat[b:b + 1], grid.to(feat.dtype), mode="bilinear",
                                    padding_mode="border", align_corners=False)
            sampled = sampled.view(channels, m, s, s).permute(1, 0, 2, 3)
            chunks.append(F.avg_pool2d(sampled, sampling_ratio))
            order.append(idx)
    pooled = torch.cat(chunks, dim=0)
    inverse = torch.empty(n, dtype=torch.long, device=boxes.device)
    inverse[torch.cat(order)] = torch.arange(n, device=boxes.device)
    return pooled[inverse]
