# Copyright (c) det_ext authors.
"""ALBEF's ViT visual encoder (parameter names as in ALBEF's checkpoints), with det_ext's optional
overlapping patches and local attention (see :class:`det_ext.pseudo.albef.AlbefConfig`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .albef import AlbefConfig

__all__ = ["VisionTransformer", "interpolate_pos_embed"]


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, width: int, kernel: int = 0):
        super().__init__()
        kernel = kernel or patch_size
        if kernel < patch_size or (kernel - patch_size) % 2:
            raise ValueError(
                f"patch kernel {kernel} must be patch size {patch_size} plus an even number"
            )
        pad = (kernel - patch_size) // 2
        self.proj = nn.Conv2d(3, width, kernel_size=kernel, stride=patch_size, padding=pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, N, C]


class ViTAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ViTAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ALBEF's ViT: returns all tokens after the final norm, [B, 1 + N, C]."""

    def __init__(self, cfg: AlbefConfig):
        super().__init__()
        n = cfg.map_size**2
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.vision_width, cfg.patch_kernel)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.vision_width))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, cfg.vision_width))
        self.blocks = nn.ModuleList(
            [
                Block(cfg.vision_width, cfg.vision_heads, cfg.mlp_ratio)
                for _ in range(cfg.vision_depth)
            ]
        )
        self.norm = nn.LayerNorm(cfg.vision_width, eps=1e-6)
        self.local_radius = cfg.vision_local_radius
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def attention_mask(self, side: int, device: torch.device) -> Optional[torch.Tensor]:
        """Boolean [1 + side^2, 1 + side^2] mask (True = may attend) of the local variant, or None.

        Row 0 ([CLS]) sees every token; a patch sees the patches within ``local_radius`` grid
        cells, itself included, and not [CLS].
        """
        if self.local_radius < 0:
            return None
        yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        yy, xx = yy.flatten(), xx.flatten()
        near = torch.maximum(
            (yy[:, None] - yy[None, :]).abs(), (xx[:, None] - xx[None, :]).abs()
        ) <= self.local_radius
        mask = torch.zeros(1 + side * side, 1 + side * side, dtype=torch.bool)
        mask[0] = True
        mask[1:, 1:] = near
        return mask.to(device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        if x.shape[1] + 1 != self.pos_embed.shape[1]:
            raise ValueError(
                f"image gives {x.shape[1]} patches but pos_embed has "
                f"{self.pos_embed.shape[1] - 1}; interpolate_pos_embed first"
            )
        side = int(math.isqrt(x.shape[1]))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        mask = self.attention_mask(side, x.device)
        for blk in self.blocks:
            x = blk(x, mask)
        return self.norm(x)


def interpolate_pos_embed(pos_embed: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Bicubic resize of a ViT position embedding [1, 1 + N, C] to ``num_patches`` patches."""
    old = pos_embed.shape[1] - 1
    if old == num_patches:
        return pos_embed
    s_old, s_new = int(math.isqrt(old)), int(math.isqrt(num_patches))
    grid = pos_embed[:, 1:].reshape(1, s_old, s_old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(s_new, s_new), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, s_new * s_new, -1).to(pos_embed.dtype)
    return torch.cat([pos_embed[:, :1], grid], dim=1)
