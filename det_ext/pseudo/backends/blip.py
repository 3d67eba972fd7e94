# Copyright (c) det_ext authors.
"""BLIP backend (transformers ``BlipForImageTextRetrieval``): Grad-CAM on the cross-attention of one
text-encoder layer from the ITM "match" logit, as for ALBEF."""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode

from det_ext.utils.errors import ConfigInputError

from ..checkpoint import CheckpointError
from ..text import WordPieceTokenizer
from .base import (
    VL_BACKEND_REGISTRY,
    Span,
    VLBackend,
    cross_attention_gradcam,
    preprocess_images,
    pool_span_rows,
)

__all__ = ["BlipBackend"]


@VL_BACKEND_REGISTRY.register()
class BlipBackend(VLBackend):
    """Word-level Grad-CAM of a BLIP ITM model.

    Args:
        model: a ``transformers.BlipForImageTextRetrieval`` (eval mode).
        tokenizer (WordPieceTokenizer): BLIP's BERT tokenizer (``vocab.txt`` of the model folder).
        cam_layer (int): text-encoder layer whose cross-attention is used.
    """

    def __init__(
        self,
        model,
        tokenizer: WordPieceTokenizer,
        cam_layer: int = 8,
        device: str = "cpu",
        max_text_len: int = 35,
        per_image: bool = False,
        span_pool: str = "sum",
    ):
        self.span_pool = span_pool
        layers = model.text_encoder.encoder.layer
        if (
            not 0 <= cam_layer < len(layers)
            or getattr(layers[cam_layer], "crossattention", None) is None
        ):
            raise ConfigInputError(
                f"PSEUDO.BLIP.CAM_LAYER {cam_layer}: no cross-attention there "
                f"(the text encoder has {len(layers)} layers)"
            )
        self.model = model.to(device).eval()
        self.attn = layers[cam_layer].crossattention.self
        self.tokenizer = tokenizer
        self.device, self.max_text_len, self.per_image = device, max_text_len, per_image
        vc = model.config.vision_config
        self.image_size = vc.image_size
        side = vc.image_size // vc.patch_size
        self.map_hw = (side, side)

    @classmethod
    def from_config(cls, cfg: CfgNode, per_image: Optional[bool] = None) -> "BlipBackend":
        from transformers import BlipForImageTextRetrieval

        folder = cfg.PSEUDO.BLIP.MODEL_DIR
        if not folder or not os.path.isfile(os.path.join(folder, "config.json")):
            raise ConfigInputError(f"PSEUDO.BLIP.MODEL_DIR '{folder}': no config.json there")
        try:
            model = BlipForImageTextRetrieval.from_pretrained(folder, attn_implementation="eager")
        except (OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{folder}: cannot load BlipForImageTextRetrieval: {e}") from None
        tokenizer = WordPieceTokenizer.from_file(os.path.join(folder, "vocab.txt"))
        return cls(
            model,
            tokenizer,
            cfg.PSEUDO.BLIP.CAM_LAYER,
            cfg.PSEUDO.DEVICE,
            cfg.PSEUDO.BLIP.MAX_TEXT_LEN,
            cfg.PSEUDO.PER_IMAGE_REFERENCE if per_image is None else per_image,
            cfg.PSEUDO.SPAN_POOL,
        )

    def tokenize(self, text: str) -> List[str]:
        return self.tokenizer.tokenize(text)

    def token_cams(self, images: Sequence[np.ndarray], captions: Sequence[str]) -> torch.Tensor:
        """Grad-CAM of every token: [B, L, h, w]."""
        pixels = preprocess_images(images, self.image_size, device=self.device)
        ids, mask = self.tokenizer.encode(captions, self.max_text_len)
        ids, mask = ids.to(self.device), mask.to(self.device)
        store = {}
        hook = self.attn.register_forward_hook(lambda mod, inp, out: store.__setitem__("p", out[1]))
        try:
            with torch.enable_grad():
                out = self.model(
                    input_ids=ids, attention_mask=mask, pixel_values=pixels, use_itm_head=True
                )
                cams = cross_attention_gradcam(
                    store["p"],
                    out.itm_score[:, 1],
                    mask,
                    self.map_hw,
                    per_image=self.per_image,
                    model=self.model,
                )
        finally:
            hook.remove()
        return cams

    def span_maps(
        self, images, captions, spans: Sequence[Sequence[Span]]
    ) -> List[List[torch.Tensor]]:
        return pool_span_rows(self.token_cams(images, captions), spans, self.span_pool)
