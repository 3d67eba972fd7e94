# Copyright (c) det_ext authors.
"""Vision-language backends (ALBEF, BLIP, CLIP) giving word-level activation maps."""

from .albef import AlbefBackend
from .base import VL_BACKEND_REGISTRY, VLBackend, cross_attention_gradcam, preprocess_images
from .blip import BlipBackend
from .clip import ClipBackend

__all__ = [
    "AlbefBackend",
    "BlipBackend",
    "ClipBackend",
    "VL_BACKEND_REGISTRY",
    "VLBackend",
    "cross_attention_gradcam",
    "preprocess_images",
]
