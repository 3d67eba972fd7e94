# Copyright (c) det_ext authors.
"""ResNet encoders with the heads and parameter names of the reference repositories.

The backbone keeps torchvision's names (``conv1``, ``bn1``, ``layer1-4``, ``downsample.0/1``) so
that checkpoints convert with the same rules as the published PCL / MoPro / MoCo ones. Heads:

- ``"linear"``: ``fc`` = Linear(feat, dim) (PCL v1 / MoCo v1);
- ``"mlp"``: ``fc.0`` Linear(feat, feat), ``fc.1`` ReLU, ``fc.2`` Linear(feat, dim) (PCL v2);
- ``"mopro"``: ``classifier`` Linear(feat, C), ``fc1`` Linear(feat, feat) -> ReLU -> ``fc2``
  Linear(feat, dim) (MoPro; also used by our ICCL).
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

__all__ = ["ResNetEncoder", "build_encoder"]


class ResNetEncoder(nn.Module):
    """A torchvision ResNet trunk (attributes named as torchvision's) with a projection head.

    Args:
        arch (str): torchvision ResNet name (``resnet18``, ``resnet50`` ...).
        head (str): ``"linear"``, ``"mlp"`` or ``"mopro"`` (see module docstring).
        dim (int): embedding dimension.
        num_classes (int): classifier outputs (``"mopro"`` head only; 0 = no classifier).
    """

    def __init__(self, arch: str = "resnet18", head: str = "mlp", dim: int = 128,
                 num_classes: int = 0):
        super().__init__()
        if not hasattr(torchvision.models, arch) or not arch.startswith(("resnet", "wide_resnet")):
            raise ValueError(f"PRETRAIN.MODEL.ARCH: unknown ResNet '{arch}'")
        trunk = getattr(torchvision.models, arch)(weights=None)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(trunk, name))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feat_dim = trunk.fc.in_features
        self.head = head
        if head == "linear":
            self.fc = nn.Linear(self.feat_dim, dim)
        elif head == "mlp":
            self.fc = nn.Sequential(nn.Linear(self.feat_dim, self.feat_dim), nn.ReLU(inplace=True),
                                    nn.Linear(self.feat_dim, dim))
        elif head == "mopro":
            if num_classes > 0:
                self.classifier = nn.Linear(self.feat_dim, num_classes)
            self.fc1 = nn.Linear(self.feat_dim, self.feat_dim)
            self.fc2 = nn.Linear(self.feat_dim, dim)
        else:
            raise ValueError(f"PRETRAIN.MODEL.HEAD: unknown head '{head}' (linear, mlp, mopro)")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features.

        Args:
            x (Tensor): images [N, 3, H, W], normalised.

        Returns:
            Tensor: [N, feat_dim].
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Returns ``{"embedding": [N, dim] L2-normalised, "logits": [N, C] (if a classifier)}``."""
        feat = self.features(x)
        out = {}
        if self.head == "mopro":
            if hasattr(self, "classifier"):
                out["logits"] = self.classifier(feat)
            emb = self.fc2(F.relu(self.fc1(feat)))
        else:
            emb = self.fc(feat)
        out["embedding"] = F.normalize(emb, dim=1)
        return out


def build_encoder(cfg) -> ResNetEncoder:
    """Encoder from a pre-training config (``cfg.PRETRAIN.MODEL``)."""
    m = cfg.PRETRAIN.MODEL
    return ResNetEncoder(m.ARCH, m.HEAD, m.DIM, m.NUM_CLASSES)
