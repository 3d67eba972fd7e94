# Copyright (c) det_ext authors.
"""ALBEF backend: Grad-CAM on the cross-attention of one multimodal layer from the ITM score."""

from __future__ import annotations

import contextlib
import logging
from typing import List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode

from det_ext.utils.errors import ConfigInputError

from ..albef import AlbefITM
from ..checkpoint import CheckpointError, load_albef_checkpoint
from ..text import WordPieceTokenizer
from .base import (
    VL_BACKEND_REGISTRY,
    Span,
    VLBackend,
    cross_attention_gradcam,
    preprocess_images,
    pool_span_rows,
)

__all__ = ["AlbefBackend"]

logger = logging.getLogger(__name__)


@VL_BACKEND_REGISTRY.register()
class AlbefBackend(VLBackend):
    """ALBEF word-level Grad-CAM (PB-OVD's ``get_activation_map``).

    Args:
        model (AlbefITM): the model (eval mode).
        tokenizer (WordPieceTokenizer): the model's tokenizer.
        cam_fusion_layer (int): which multimodal layer's cross-attention is used, counted from the
            first fusion layer (2 = the third, the ALBEF/PB-OVD choice).
        device (str): torch device.
        max_text_len (int): captions are truncated to this many tokens (with [CLS] and [SEP]).
        per_image (bool): the reference's one-backward-per-pair loop instead of one batched
            backward.
        cam_mode (str): ``"gradcam"`` or ``"attention"`` (see :func:`cross_attention_gradcam`).
        span_pool (str): pooling of a name's token rows (see :func:`pool_span_rows`).
    """

    def __init__(
        self,
        model: AlbefITM,
        tokenizer: WordPieceTokenizer,
        cam_fusion_layer: int = 2,
        device: str = "cpu",
        max_text_len: int = 30,
        per_image: bool = False,
        cam_mode: str = "gradcam",
        span_pool: str = "sum",
    ):
        self.model = model.to(device).eval()
        self.span_pool = span_pool
        self.tokenizer = tokenizer
        self.layer = model.cfg.fusion_layer + cam_fusion_layer
        self.attn = model.cross_attention(self.layer)
        self.device = device
        self.max_text_len = max_text_len
        self.per_image = per_image
        self.cam_mode = cam_mode
        self.image_size = model.cfg.image_size
        self.map_hw = (model.cfg.map_size, model.cfg.map_size)
        if tokenizer.vocab and len(tokenizer.vocab) > model.cfg.vocab_size:
            raise ConfigInputError(
                f"tokenizer has {len(tokenizer.vocab)} tokens but the model's "
                f"vocabulary has {model.cfg.vocab_size}"
            )

    @classmethod
    def from_config(cls, cfg: CfgNode, per_image: Optional[bool] = None) -> "AlbefBackend":
        c = cfg.PSEUDO.ALBEF
        if not c.CHECKPOINT:
            raise ConfigInputError("PSEUDO.ALBEF.CHECKPOINT is empty: give an ALBEF checkpoint")
        model, config = load_albef_checkpoint(c.CHECKPOINT, image_size=c.IMAGE_SIZE or None)
        if c.VOCAB_FILE:
            tokenizer = WordPieceTokenizer.from_file(c.VOCAB_FILE)
        elif config.get("tokenizer_vocab"):
            tokenizer = WordPieceTokenizer(config["tokenizer_vocab"])
        else:
            raise CheckpointError(
                f"{c.CHECKPOINT}: no tokenizer vocabulary in the checkpoint; set "
                "PSEUDO.ALBEF.VOCAB_FILE (bert-base-uncased vocab.txt)"
            )
        return cls(
            model,
            tokenizer,
            c.CAM_FUSION_LAYER,
            cfg.PSEUDO.DEVICE,
            c.MAX_TEXT_LEN,
            cfg.PSEUDO.PER_IMAGE_REFERENCE if per_image is None else per_image,
            c.CAM_MODE,
            cfg.PSEUDO.SPAN_POOL,
        )

    def tokenize(self, text: str) -> List[str]:
        return self.tokenizer.tokenize(text)

    def token_cams(self, images: Sequence[np.ndarray], captions: Sequence[str]) -> torch.Tensor:
        """Grad-CAM of every token: [B, L, h, w] (row 0 = [CLS])."""
        pixels = preprocess_images(images, self.image_size, device=self.device)
        ids, mask = self.tokenizer.encode(captions, self.max_text_len)
        ids, mask = ids.to(self.device), mask.to(self.device)
        self.attn.save_attention = True
        try:
            # The batched mode needs gradients only above the cross-attention; the reference loop
            # back-propagates through the whole model as PB-OVD does.
            ctx = contextlib.nullcontext() if self.per_image else torch.no_grad()
            with ctx:
                image_embeds = self.model.visual_encoder(pixels)
            with torch.enable_grad():
                scores = self.model.itm_logits(image_embeds, ids, mask)[:, 1]
                cams = cross_attention_gradcam(
                    self.attn.attention_probs,
                    scores,
                    mask,
                    self.map_hw,
                    per_image=self.per_image,
                    model=self.model,
                    mode=self.cam_mode,
                )
        finally:
            self.attn.save_attention = False
            self.attn.attention_probs = None
        return cams

    def span_maps(
        self, images: Sequence[np.ndarray], captions: Sequence[str], spans: Sequence[Sequence[Span]]
    ) -> List[List[torch.Tensor]]:
        return pool_span_rows(self.token_cams(images, captions), spans, self.span_pool)

    @torch.no_grad()
    def text_embeddings(self, names: Sequence[str]) -> torch.Tensor:
        """L2-normalised text-encoder [CLS] states of ``"a {name}"`` (text layers only): [K,
        hidden]."""
        ids, mask = self.tokenizer.encode([f"a {n}" for n in names], self.max_text_len)
        h = self.model.text_encoder(ids.to(self.device), mask.to(self.device), mode="text")
        return torch.nn.functional.normalize(h[:, 0], dim=-1).cpu()
