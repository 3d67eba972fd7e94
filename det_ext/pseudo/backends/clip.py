# Copyright (c) det_ext authors.
"""CLIP backend (open_clip): Grad-CAM on the last visual feature map for a word's text embedding.

For ViT towers the "last feature map" is the token grid entering the last block (see __init__).

The map of a mention depends on its words only (prompted with ``PSEUDO.CLIP.PROMPT``), not on the
rest of the caption; spans index the caption's words (position 0 is a virtual start token, as for
BERT). Each (pair, mention) gets its own copy of the image in the batch so that one backward pass on
the sum of the cosine scores gives every map.
"""

from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode

from det_ext.utils.errors import ConfigInputError

from ..checkpoint import CheckpointError
from .base import VL_BACKEND_REGISTRY, Span, VLBackend, preprocess_images

__all__ = ["ClipBackend"]


@VL_BACKEND_REGISTRY.register()
class ClipBackend(VLBackend):
    """Word-level Grad-CAM of an open_clip model.

    Args:
        model: an ``open_clip`` CLIP model (ViT or ModifiedResNet visual tower).
        tokenizer: open_clip tokenizer (texts -> [N, context] ids).
        prompt (str): template with one ``{}`` for the word(s).
    """

    max_text_len = 77

    def __init__(
        self,
        model,
        tokenizer,
        prompt: str = "a photo of a {}.",
        device: str = "cpu",
        per_image: bool = False,
    ):
        self.model = model.to(device).eval()
        self.text_tokenizer, self.prompt = tokenizer, prompt
        self.device, self.per_image = device, per_image
        self.context_length = int(getattr(model, "context_length", 77))
        visual = model.visual
        size = visual.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else size
        # ViT: the tokens entering the last block (the last block's patch outputs never reach the
        # pooled class token, so their gradient is zero); ResNet: layer4 before attention pooling.
        self.feature_module = (
            visual.transformer.resblocks[max(-2, -len(visual.transformer.resblocks))]
            if hasattr(visual, "transformer")
            else visual.layer4
        )

    @classmethod
    def from_config(cls, cfg: CfgNode, per_image: Optional[bool] = None) -> "ClipBackend":
        import open_clip

        c = cfg.PSEUDO.CLIP
        if c.MODEL_NAME.endswith(".json"):
            if not os.path.isfile(c.MODEL_NAME):
                raise ConfigInputError(f"PSEUDO.CLIP.MODEL_NAME: file '{c.MODEL_NAME}' not found")
            with open(c.MODEL_NAME) as f:
                model = open_clip.model.CLIP(**json.load(f))
            tokenizer = open_clip.get_tokenizer("ViT-B-32")
        else:
            try:
                model = open_clip.create_model(c.MODEL_NAME, pretrained=None)
            except RuntimeError as e:
                raise ConfigInputError(f"PSEUDO.CLIP.MODEL_NAME: {e}") from None
            tokenizer = open_clip.get_tokenizer(c.MODEL_NAME)
        if c.CHECKPOINT:
            try:
                state = torch.load(c.CHECKPOINT, map_location="cpu", weights_only=False)
                state = state.get("state_dict", state)
                state = {
                    k[len("module.") :] if k.startswith("module.") else k: v
                    for k, v in state.items()
                }
                model.load_state_dict(state)
            except (OSError, RuntimeError, AttributeError, Exception) as e:  # noqa: BLE001
                raise CheckpointError(
                    f"{c.CHECKPOINT}: not a loadable {c.MODEL_NAME} checkpoint "
                    f"({type(e).__name__}: {str(e)[:300]})"
                ) from None
        return cls(
            model,
            tokenizer,
            c.PROMPT,
            cfg.PSEUDO.DEVICE,
            cfg.PSEUDO.PER_IMAGE_REFERENCE if per_image is None else per_image,
        )

    def tokenize(self, text: str) -> List[str]:
        return text.lower().split()

    def span_maps(
        self, images: Sequence[np.ndarray], captions: Sequence[str], spans: Sequence[Sequence[Span]]
    ) -> List[List[torch.Tensor]]:
        items = [(p, left, right) for p, ss in enumerate(spans) for left, right in ss]
        if not items:
            return [[] for _ in spans]
        words = [
            " ".join(self.tokenize(captions[p])[left - 1 : right - 1]) for p, left, right in items
        ]
        pixels = preprocess_images(
            [images[p] for p, _, _ in items], self.image_size, device=self.device
        )
        store = {}
        hook = self.feature_module.register_forward_hook(lambda m, i, o: store.__setitem__("f", o))
        try:
            with torch.enable_grad():
                text = F.normalize(
                    self.model.encode_text(
                        self.text_tokenizer(
                            [self.prompt.format(w) for w in words],
                            context_length=self.context_length,
                        ).to(self.device)
                    ),
                    dim=-1,
                )
                image = F.normalize(self.model.encode_image(pixels), dim=-1)
                scores = (image * text.detach()).sum(-1)
                feats = store["f"]
                if self.per_image:
                    grads = torch.zeros_like(feats)
                    for i in range(len(items)):
                        g = torch.autograd.grad(scores[i], feats, retain_graph=i + 1 < len(items))[
                            0
                        ]
                        grads[i] = g[i]
                else:
                    grads = torch.autograd.grad(scores.sum(), feats)[0]
        finally:
            hook.remove()
        feats, grads = feats.detach(), grads.detach()
        if feats.dim() == 3:  # ViT tokens [B, 1 + N, C]: drop the class token, reshape to the grid
            n = feats.shape[1] - 1
            side = int(round(n**0.5))
            feats = feats[:, 1:].transpose(1, 2).reshape(len(items), -1, side, side)
            grads = grads[:, 1:].transpose(1, 2).reshape(len(items), -1, side, side)
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cams = (weights * feats).sum(1).clamp(min=0)  # [items, h, w]
        out: List[List[torch.Tensor]] = [[] for _ in spans]
        for (p, _, _), cam in zip(items, cams):
            out[p].append(cam.cpu())
        return out

    @torch.no_grad()
    def text_embeddings(self, names: Sequence[str]) -> torch.Tensor:
        """L2-normalised CLIP text embeddings of the prompted names: [K, D]."""
        ids = self.text_tokenizer(
            [self.prompt.format(n) for n in names], context_length=self.context_length
        ).to(self.device)
        return F.normalize(self.model.encode_text(ids), dim=-1).cpu()
