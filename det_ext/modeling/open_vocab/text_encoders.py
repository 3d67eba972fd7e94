# Copyright (c) det_ext authors.
"""Text encoders for class-name embeddings: open_clip CLIP, transformers CLIP and the LT-Shapes tiny
vision-language model; prompt-template averaging and a file cache.

Every encoder loads local files only (no model hub): open_clip ``create_model(name,
pretrained=<checkpoint file>)``, transformers ``CLIPModel.from_pretrained(<folder>)`` with the
tokenizer saved in the same folder, the tiny VL model from its det_ext checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from det_ext.utils.errors import ConfigInputError, DetExtInputError

from .embeddings import ClassEmbeddingError, ClassEmbeddings, load_text_embeddings
from .embeddings import save_text_embeddings

__all__ = ["TextEncoder", "OpenClipTextEncoder", "HFClipTextEncoder", "build_text_encoder",
           "register_text_encoder", "default_templates", "compute_class_embeddings",
           "cached_class_embeddings", "CLIP_TEMPLATES", "TEXT_ENCODERS"]

logger = logging.getLogger(__name__)

# A small CLIP-style prompt ensemble (the names are inserted at ``{}``).
CLIP_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a photo of one {}.",
                  "a close-up photo of a {}.", "a photo of a small {}.", "a photo of a large {}.",
                  "there is a {} in the scene.", "a cropped photo of the {}.")


class TextEncoder:
    """Maps texts to embedding vectors. Subclasses implement :meth:`encode`.

    Attributes:
        dim (int): embedding size D.
        kind (str): encoder family name.
    """

    dim: int = 0
    kind: str = ""

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Returns float32 [len(texts), D] embeddings (not necessarily normalised)."""
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        """JSON-able description stored in embedding files and used as the cache key."""
        return {"kind": self.kind}


class OpenClipTextEncoder(TextEncoder):
    """open_clip CLIP text tower.

    Args:
        model_name (str): open_clip architecture, e.g. ``"ViT-B-32"`` (or one added with
            ``open_clip.add_model_config``).
        weights (str): local checkpoint file (open_clip or OpenAI format); empty for random init.
        device (str): torch device.
    """

    kind = "open_clip"

    def __init__(self, model_name: str, weights: str = "", device: str = "cpu"):
        import open_clip

        if weights and not os.path.isfile(weights):
            raise ConfigInputError(f"OPEN_VOCAB.TEXT_ENCODER.WEIGHTS: open_clip checkpoint not "
                                   f"found: {weights}")
        try:
            self.model = open_clip.create_model(model_name, pretrained=weights or None,
                                                device=device)
        except RuntimeError as e:
            raise ConfigInputError(f"open_clip model '{model_name}' with weights '{weights}': {e}"
                                   ) from None
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device = device
        self.model_name, self.weights = model_name, weights
        self.dim = int(self.encode(["x"]).shape[1])

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens).float().cpu()

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "model": self.model_name,
                "weights": os.path.abspath(self.weights) if self.weights else ""}


class HFClipTextEncoder(TextEncoder):
    """transformers ``CLIPModel`` text tower + projection, loaded from a local folder that also
    holds the tokenizer files.

    Args:
        path (str): folder written by ``save_pretrained`` (config, weights, tokenizer).
        device (str): torch device.
    """

    kind = "hf_clip"

    def __init__(self, path: str, device: str = "cpu"):
        from transformers import AutoTokenizer, CLIPModel

        if not os.path.isdir(path):
            raise ConfigInputError(f"OPEN_VOCAB.TEXT_ENCODER.WEIGHTS: transformers CLIP folder not "
                                   f"found: {path}")
        self.model = CLIPModel.from_pretrained(path).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.device, self.path = device, path
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        self.dim = int(self.model.config.projection_dim)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(list(texts), padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt").to(self.device)
        out = self.model.get_text_features(input_ids=batch["input_ids"],
                                           attention_mask=batch["attention_mask"])
        if not isinstance(out, torch.Tensor):  # transformers >= 5 returns a model output
            out = out.pooler_output
        return out.float().cpu()

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "weights": os.path.abspath(self.path)}


TEXT_ENCODERS: Dict[str, Callable[..., TextEncoder]] = {
    "open_clip": lambda model, weights, device, **_: OpenClipTextEncoder(model, weights, device),
    "hf_clip": lambda model, weights, device, **_: HFClipTextEncoder(weights, device),
}


DEFAULT_TEMPLATES: Dict[str, Sequence[str]] = {"open_clip": CLIP_TEMPLATES,
                                               "hf_clip": CLIP_TEMPLATES}


def register_text_encoder(kind: str, builder: Callable[..., TextEncoder],
                          templates: Sequence[str] = CLIP_TEMPLATES) -> None:
    """Adds an encoder family: ``builder(model_name, weights, device, **options) -> TextEncoder``
    and its default prompt templates."""
    TEXT_ENCODERS[kind] = builder
    DEFAULT_TEMPLATES[kind] = tuple(templates)


def default_templates(kind: str) -> List[str]:
    """The default prompt templates of an encoder family (CLIP's for unknown families)."""
    if kind == "tiny_vl" and kind not in DEFAULT_TEMPLATES:
        from . import tiny_vl  # noqa: F401  (registers "tiny_vl")
    return list(DEFAULT_TEMPLATES.get(kind, CLIP_TEMPLATES))


def build_text_encoder(kind: str, weights: str = "", model: str = "", device: str = "cpu",
                       **options: Any) -> TextEncoder:
    """Builds a text encoder by family name (``open_clip``, ``hf_clip``, ``tiny_vl``).

    ``options`` go to the family's builder (``tiny_vl``: ``pooling``).

    Raises:
        ConfigInputError: an unknown family or missing weights.
    """
    if kind == "tiny_vl" and kind not in TEXT_ENCODERS:
        from . import tiny_vl  # noqa: F401  (registers "tiny_vl")
    if kind not in TEXT_ENCODERS:
        raise ConfigInputError(f"OPEN_VOCAB.TEXT_ENCODER.NAME: unknown text encoder '{kind}' "
                               f"(known: {sorted(TEXT_ENCODERS) + ['tiny_vl']})")
    return TEXT_ENCODERS[kind](model, weights, device, **options)


def compute_class_embeddings(names: Sequence[str], encoder: TextEncoder,
                             templates: Sequence[str] = CLIP_TEMPLATES,
                             batch_size: int = 256) -> ClassEmbeddings:
    """Embeds every class name with every template, L2-normalises, averages over templates and
    L2-normalises again (CLIP prompt ensembling).

    Args:
        names (Sequence[str]): K class names.
        encoder (TextEncoder): the text encoder.
        templates (Sequence[str]): prompt templates, each with one ``{}``.

    Returns:
        ClassEmbeddings: [K, D] unit-norm embeddings with the names, templates and encoder.
    """
    names = [str(n).strip() for n in names]
    if not names or any(not n for n in names):
        raise DetExtInputError(f"class names must be non-empty strings, got {list(names)[:5]}")
    templates = list(templates) or ["{}"]
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise DetExtInputError(f"prompt templates must contain '{{}}' exactly once: {bad}")
    total = torch.zeros(len(names), encoder.dim)
    for t in templates:
        texts = [t.format(n) for n in names]
        parts = [encoder.encode(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
        total += F.normalize(torch.cat(parts).float(), dim=1)
    emb = F.normalize(total / len(templates), dim=1)
    return ClassEmbeddings(names, emb, templates, encoder.describe())


def _cache_key(names: Sequence[str], templates: Sequence[str], describe: Dict[str, Any]) -> str:
    blob = json.dumps({"names": list(names), "templates": list(templates), "encoder": describe},
                      sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def cached_class_embeddings(names: Sequence[str], encoder: TextEncoder,
                            templates: Sequence[str] = CLIP_TEMPLATES,
                            cache_dir: Optional[str] = None) -> ClassEmbeddings:
    """:func:`compute_class_embeddings`, cached in ``cache_dir`` under a key of the names,
    templates and encoder description (None: no cache)."""
    if not cache_dir:
        return compute_class_embeddings(names, encoder, templates)
    key = _cache_key(names, templates, encoder.describe())
    path = os.path.join(cache_dir, f"text_emb_{key}.pt")
    if os.path.isfile(path):
        try:
            emb = load_text_embeddings(path, expected_names=list(names), expected_dim=encoder.dim)
            logger.info("Class text embeddings loaded from cache %s", path)
            return emb
        except ClassEmbeddingError as e:
            logger.warning("Ignoring unusable cache file: %s", e)
    emb = compute_class_embeddings(names, encoder, templates)
    save_text_embeddings(path, emb)
    return emb
