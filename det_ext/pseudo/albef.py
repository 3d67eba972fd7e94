# Copyright (c) det_ext authors.
"""An ALBEF image-text-matching model whose parameter names follow ALBEF's checkpoints.

Structure (salesforce/ALBEF): a ViT visual encoder returning all tokens after its final norm; a BERT
encoder whose first ``fusion_layer`` layers only self-attend (text encoder) and whose later layers
add cross-attention to the image tokens (multimodal encoder); an ITM head (logit 1 = "match") on the
multimodal ``[CLS]``. ``vision_proj`` / ``text_proj`` / ``temp`` (contrastive head) are optional.
The same code builds ALBEF-base (ViT-B/16 + BERT-base, 6 fusion layers) and the tiny LT-Shapes
model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AlbefConfig", "AlbefITM", "VisionTransformer", "FusionBert", "interpolate_pos_embed"]


@dataclasses.dataclass
class AlbefConfig:
    """Architecture of an ALBEF model (defaults: ALBEF-base at 256 px).

    Attributes:
        image_size, patch_size: input resolution and ViT patch size (map side = image/patch).
        vision_width, vision_depth, vision_heads, mlp_ratio: the ViT.
        vocab_size, hidden_size, num_layers, num_heads, intermediate_size: the BERT encoder.
        fusion_layer: index of the first layer with cross-attention (layers before it are
        text-only). max_position: BERT position embeddings.
        embed_dim: contrastive projection size (0: no ``vision_proj``/``text_proj``/``temp``).
        patch_kernel: side of the patch-embedding convolution (0: ``patch_size``, ALBEF's
            non-overlapping patches; larger: overlapping patches, still with stride
            ``patch_size``, that see a whole small object).
        vision_local_radius: -1 (ALBEF): global ViT self-attention. r >= 0 (det_ext's tiny
            models): a patch token attends only to the patches within r grid cells (Chebyshev
            distance; 0 = itself) and not to [CLS], while [CLS] attends to everything; patch
            tokens then describe their neighbourhood only, so a word can learn where an object is
            only by attending to it.
        fusion_image_cls: whether the multimodal layers' cross-attention sees the image [CLS]
            token (ALBEF: yes). Without it, matching a caption needs attention on the patches.
        text_window, fusion_window: -1 (ALBEF): global self-attention in the text-only / the
            multimodal layers. w >= 0: a word token attends only to the tokens within w positions
            (not to [CLS]), while [CLS] attends to all; a word's cross-attention query then
            describes its phrase ("two red circles"), not the whole caption.
    """

    image_size: int = 256
    patch_size: int = 16
    vision_width: int = 768
    vision_depth: int = 12
    vision_heads: int = 12
    mlp_ratio: float = 4.0
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    fusion_layer: int = 6
    max_position: int = 512
    type_vocab_size: int = 2
    embed_dim: int = 256
    patch_kernel: int = 0
    vision_local_radius: int = -1
    fusion_image_cls: bool = True
    text_window: int = -1
    fusion_window: int = -1

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def map_size(self) -> int:
        return self.image_size // self.patch_size


# ----------------------------------------------------------------------------- visual encoder
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


# ----------------------------------------------------------------------------- text / fusion
class BertEmbeddings(nn.Module):
    def __init__(self, cfg: AlbefConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(cfg.max_position, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=1e-12)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(pos)[None]
            + self.token_type_embeddings(torch.zeros_like(input_ids))
        )
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    """Multi-head attention; with ``save_attention`` it keeps its post-softmax probabilities
    [B, heads, L_q, L_k] (in the autograd graph) in ``self.attention_probs`` for Grad-CAM."""

    def __init__(self, hidden: int, heads: int, kv_width: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)
        self.save_attention = False
        self.attention_probs: Optional[torch.Tensor] = None

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, mask_add: torch.Tensor, context: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        ctx = x if context is None else context
        q, k, v = (
            self._split(self.query(x)),
            self._split(self.key(ctx)),
            self._split(self.value(ctx)),
        )
        if not self.save_attention:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_add)
        else:
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask_add
            probs = scores.softmax(dim=-1)
            self.attention_probs = probs
            out = probs @ v
        b, _, n, _ = out.shape
        return out.transpose(1, 2).reshape(b, n, -1)


class BertSelfOutput(nn.Module):
    def __init__(self, hidden: int, inner: Optional[int] = None):
        super().__init__()
        self.dense = nn.Linear(inner or hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class BertAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_width: int):
        super().__init__()
        self.self = BertSelfAttention(hidden, heads, kv_width)
        self.output = BertSelfOutput(hidden)

    def forward(self, x, mask_add, context=None):
        return self.output(self.self(x, mask_add, context), x)


class BertIntermediate(nn.Module):
    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.dense = nn.Linear(hidden, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, cfg: AlbefConfig, cross: bool):
        super().__init__()
        self.attention = BertAttention(cfg.hidden_size, cfg.num_heads, cfg.hidden_size)
        self.has_cross = cross
        if cross:
            self.crossattention = BertAttention(cfg.hidden_size, cfg.num_heads, cfg.vision_width)
        self.intermediate = BertIntermediate(cfg.hidden_size, cfg.intermediate_size)
        self.output = BertSelfOutput(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, mask_add, image=None, image_mask_add=None):
        x = self.attention(x, mask_add)
        if self.has_cross and image is not None:
            x = self.crossattention(x, image_mask_add, image)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, cfg: AlbefConfig):
        super().__init__()
        self.layer = nn.ModuleList(
            [BertLayer(cfg, cross=i >= cfg.fusion_layer) for i in range(cfg.num_layers)]
        )


class FusionBert(nn.Module):
    """BERT without pooler; ``mode`` = ``"text"`` (layers < fusion_layer), ``"fusion"`` (the rest,
    from given text states) or ``"multi_modal"`` (all)."""

    def __init__(self, cfg: AlbefConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)

    def forward(
        self,
        input_ids: Optional[torch.Tensor],
        attention_mask: torch.Tensor,
        image_embeds: Optional[torch.Tensor] = None,
        mode: str = "multi_modal",
        text_embeds: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Returns the last hidden states [B, L, hidden]."""
        mask_add = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        layers = range(self.cfg.num_layers)
        if mode == "text":
            layers = range(self.cfg.fusion_layer)
        elif mode == "fusion":
            layers = range(self.cfg.fusion_layer, self.cfg.num_layers)
        x = self.embeddings(input_ids) if text_embeds is None else text_embeds
        image_mask_add = None
        if image_embeds is not None:
            image_mask_add = torch.zeros(
                image_embeds.shape[0],
                1,
                1,
                image_embeds.shape[1],
                device=image_embeds.device,
                dtype=x.dtype,
            )
            if not self.cfg.fusion_image_cls:
                image_mask_add[..., 0] = -10000.0
        windows = {self.cfg.text_window, self.cfg.fusion_window}
        masks = {w: self.windowed_mask(mask_add, w) for w in windows}
        for i in layers:
            w = self.cfg.text_window if i < self.cfg.fusion_layer else self.cfg.fusion_window
            x = self.encoder.layer[i](x, masks[w].to(x.dtype), image_embeds, image_mask_add)
        return x

    @staticmethod
    def windowed_mask(mask_add: torch.Tensor, window: int) -> torch.Tensor:
        """The additive padding mask [B, 1, 1, L] combined with a local window (-1: unchanged):
        [B, 1, L, L] where word rows see the tokens within ``window`` positions, not [CLS]."""
        if window < 0:
            return mask_add
        length = mask_add.shape[-1]
        pos = torch.arange(length, device=mask_add.device)
        near = (pos[:, None] - pos[None, :]).abs() <= window
        near[0] = True  # [CLS] sees every token
        near[1:, 0] = False  # words do not see [CLS]
        return mask_add + (~near).to(mask_add.dtype)[None, None] * -10000.0


class AlbefITM(nn.Module):
    """ALBEF with its ITM head (and, when ``cfg.embed_dim > 0``, its contrastive projections)."""

    def __init__(self, cfg: AlbefConfig):
        super().__init__()
        self.cfg = cfg
        self.visual_encoder = VisionTransformer(cfg)
        self.text_encoder = FusionBert(cfg)
        self.itm_head = nn.Linear(cfg.hidden_size, 2)
        if cfg.embed_dim > 0:
            self.vision_proj = nn.Linear(cfg.vision_width, cfg.embed_dim)
            self.text_proj = nn.Linear(cfg.hidden_size, cfg.embed_dim)
            self.temp = nn.Parameter(torch.tensor(0.07))

    def cross_attention(self, layer: int) -> BertSelfAttention:
        """The cross-attention module of BERT layer ``layer`` (must be a fusion layer)."""
        if not self.cfg.fusion_layer <= layer < self.cfg.num_layers:
            raise ValueError(
                f"layer {layer} has no cross-attention (fusion layers are "
                f"{self.cfg.fusion_layer}..{self.cfg.num_layers - 1})"
            )
        return self.text_encoder.encoder.layer[layer].crossattention.self

    def itm_logits(
        self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """ITM logits [B, 2] for image tokens [B, 1+N, C] and texts [B, L]."""
        h = self.text_encoder(input_ids, attention_mask, image_embeds, mode="multi_modal")
        return self.itm_head(h[:, 0])

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """ITM logits [B, 2] for images [B, 3, H, W]."""
        return self.itm_logits(self.visual_encoder(images), input_ids, attention_mask)
