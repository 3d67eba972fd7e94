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

from .albef_vision import VisionTransformer, interpolate_pos_embed

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
        masks = {w: self.self_attention_mask(attention_mask, w) for w in windows}
        for i in layers:
            w = self.cfg.text_window if i < self.cfg.fusion_layer else self.cfg.fusion_window
            x = self.encoder.layer[i](x, masks[w].to(x.dtype), image_embeds, image_mask_add)
        return x

    @classmethod
    def self_attention_mask(cls, attention_mask: torch.Tensor, window: int) -> torch.Tensor:
        """Additive self-attention mask of the layers with local ``window`` (-1: global) from the
        [B, L] token mask (1 = token, 0 = padding): [B, 1, 1, L] or, with a window, [B, 1, L, L]."""
        mask_add = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        return cls.windowed_mask(mask_add, window)

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
