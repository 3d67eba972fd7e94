# Copyright (c) det_ext authors.
"""The vision-language backend interface, its registry, preprocessing and cross-attention
Grad-CAM."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
from detectron2.utils.registry import Registry
from PIL import Image

__all__ = [
    "VL_BACKEND_REGISTRY",
    "VLBackend",
    "preprocess_images",
    "cross_attention_gradcam",
    "CLIP_MEAN",
    "CLIP_STD",
    "Span",
    "SPAN_POOLS",
    "pool_span_rows",
]

VL_BACKEND_REGISTRY = Registry("VL_BACKEND")
VL_BACKEND_REGISTRY.__doc__ = """
Vision-language backends giving word-level activation maps (``cfg.PSEUDO.BACKEND``). Each class has
a ``from_config(cfg)`` classmethod.
"""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Span = Tuple[int, int]  # [left, right) token positions in the encoded caption ([CLS] = 0)


def preprocess_images(
    images: Sequence[np.ndarray], size: int, mean=CLIP_MEAN, std=CLIP_STD, device: str = "cpu"
) -> torch.Tensor:
    """ALBEF preprocessing: bicubic resize to ``size`` x ``size`` (aspect ratio not kept), [0, 1],
    normalised with the CLIP mean and std.

    Args:
        images: RGB uint8 arrays [H, W, 3].

    Returns:
        Tensor: [B, 3, size, size] float32.
    """
    out = []
    for img in images:
        if img.shape[0] != size or img.shape[1] != size:
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))
        out.append(torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1))
    x = torch.stack(out).float().div_(255.0)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return ((x - m) / s).to(device)


def cross_attention_gradcam(
    probs: torch.Tensor,
    scores: torch.Tensor,
    text_mask: torch.Tensor,
    map_hw: Tuple[int, int],
    per_image: bool = False,
    model: torch.nn.Module = None,
    mode: str = "gradcam",
) -> torch.Tensor:
    """Word-level Grad-CAM on cross-attention probabilities (ALBEF ``get_activation_map``).

    CAM[b, t] = mean over heads of A[b, :, t, 1:] * relu(d s_b / d A[b, :, t, 1:]), times the text
    mask, reshaped to the patch grid; the image [CLS] key is dropped. ``mode="attention"`` uses
    the attention alone (mean over heads of A[b, :, t, 1:]; no backward pass).

    Args:
        probs (Tensor): post-softmax attention [B, heads, L, 1 + h*w], part of the graph of
            ``scores``.
        scores (Tensor): [B] target per pair (raw ITM "match" logit).
        text_mask (Tensor): [B, L] 1 for real tokens.
        map_hw (tuple): (h, w) patch grid.
        per_image (bool): False: one backward pass on sum_b s_b (each s_b depends only on its own
            pair, so the gradients are the same); True: the reference loop, one backward per pair
            through the whole model (``retain_graph``), for parity tests and timing.
        model (Module or None): with ``per_image``, its parameter gradients are zeroed per pair as
            in the reference.
        mode (str): ``"gradcam"`` (the reference) or ``"attention"``.

    Returns:
        Tensor: [B, L, h, w] maps (detached).
    """
    if mode not in ("gradcam", "attention"):
        raise ValueError(f"CAM mode must be 'gradcam' or 'attention', got '{mode}'")
    a = probs.detach()[..., 1:]
    if mode == "attention":
        cam = a.mean(dim=1) * text_mask[:, :, None].to(a.dtype)
        return cam.reshape(cam.shape[0], cam.shape[1], map_hw[0], map_hw[1])
    if per_image:
        probs.retain_grad()
        grads = torch.zeros_like(probs)
        for b in range(scores.shape[0]):
            if model is not None:
                model.zero_grad(set_to_none=True)
            probs.grad = None
            scores[b].backward(retain_graph=b + 1 < scores.shape[0])
            grads[b] = probs.grad[b]
    else:
        grads = torch.autograd.grad(scores.sum(), probs)[0]
    g = grads.detach()[..., 1:].clamp(min=0)
    cam = (a * g).mean(dim=1) * text_mask[:, :, None].to(a.dtype)
    return cam.reshape(cam.shape[0], cam.shape[1], map_hw[0], map_hw[1])


class VLBackend:
    """A model giving a word-level activation map for (image, caption, word span).

    Subclasses implement :meth:`tokenize` (the token list the spans refer to, without specials) and
    :meth:`span_maps`.
    """

    max_text_len: int = 30
    per_image: bool = False

    def tokenize(self, text: str) -> List[str]:
        raise NotImplementedError

    def span_maps(
        self, images: Sequence[np.ndarray], captions: Sequence[str], spans: Sequence[Sequence[Span]]
    ) -> List[List[torch.Tensor]]:
        """Activation maps of each span of each (image, caption) pair, in one batch.

        Args:
            images: RGB uint8 arrays [H, W, 3], one per pair (an image may repeat).
            captions: cleaned captions, one per pair.
            spans: per pair, the [left, right) token spans (``[CLS]`` = position 0).

        Returns:
            list: per pair, one float Tensor [h, w] per span (the sum of its token rows).
        """
        raise NotImplementedError

    def text_embeddings(self, names: Sequence[str]) -> torch.Tensor:
        """Text embeddings of category names [K, D] (optional; for the output's categories)."""
        raise NotImplementedError(f"{type(self).__name__} gives no text embeddings")


SPAN_POOLS = ("sum", "geomean")


def pool_span_rows(
    cams: torch.Tensor, spans: Sequence[Sequence[Span]], pool: str = "sum"
) -> List[List[torch.Tensor]]:
    """Pools the token rows of each span into a *new* tensor (the reference summed in place into
    the row of the first token, corrupting maps shared by overlapping names).

    Args:
        cams (Tensor): [B, L, h, w].
        pool (str): ``"sum"`` (PB-OVD) or ``"geomean"``: the geometric mean of the token rows,
            each min-max normalised first, so that a multi-word name ("red circle") is active
            where *every* word is (red things that are circles), not where any one is.

    Returns:
        list: per pair, one Tensor [h, w] per span.
    """
    if pool not in SPAN_POOLS:
        raise ValueError(f"span pooling must be one of {SPAN_POOLS}, got '{pool}'")
    out = []
    for b, pair_spans in enumerate(spans):
        maps = []
        for left, right in pair_spans:
            rows = cams[b, left:right]
            if pool == "sum" or right - left == 1:
                maps.append(rows.sum(dim=0).cpu())
                continue
            flat = rows.reshape(rows.shape[0], -1).double()
            lo, hi = flat.min(1, keepdim=True)[0], flat.max(1, keepdim=True)[0]
            norm = (flat - lo) / (hi - lo).clamp_min(1e-12)
            geo = norm.clamp_min(1e-12).log().mean(0).exp()
            maps.append(geo.reshape(rows.shape[1:]).to(cams.dtype).cpu())
        out.append(maps)
    return out
