# Copyright (c) det_ext authors.
"""Swapping a trained open-vocabulary detector's vocabulary in one call."""
from __future__ import annotations

import hashlib
import logging
from typing import List, Optional, Sequence, Union

import torch
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from torch import nn

from .embeddings import ClassEmbeddingError, ClassEmbeddings, check_names, load_text_embeddings
from .predictor import OpenVocabOutputLayers
from .text_encoders import CLIP_TEMPLATES, TextEncoder, cached_class_embeddings

__all__ = ["set_vocabulary", "get_vocabulary", "find_open_vocab_heads", "parse_vocabulary"]

logger = logging.getLogger(__name__)


def find_open_vocab_heads(model: nn.Module):
    """The model's ROI heads holding an :class:`OpenVocabOutputLayers` (unwraps DDP).

    Raises:
        ClassEmbeddingError: the model has no text-embedding classifier.
    """
    model = getattr(model, "module", model)
    heads = getattr(model, "roi_heads", None)
    if heads is None or not isinstance(getattr(heads, "box_predictor", None),
                                       OpenVocabOutputLayers):
        raise ClassEmbeddingError("the model has no text-embedding classifier (build it with "
                                  "MODEL.ROI_HEADS.NAME 'OpenVocabROIHeads')")
    return heads


def get_vocabulary(model: nn.Module) -> List[str]:
    """The class names the model currently predicts (contiguous id order)."""
    return list(find_open_vocab_heads(model).class_names)


def parse_vocabulary(text: str) -> List[str]:
    """Splits a comma-separated vocabulary (``"red triangle, blue ring"``) into names."""
    names = [n.strip() for n in text.split(",")]
    names = [n for n in names if n]
    if not names:
        raise ClassEmbeddingError(f"empty vocabulary: {text!r}")
    return names


def _metadata_name(names: Sequence[str]) -> str:
    digest = hashlib.sha1("\n".join(names).encode()).hexdigest()[:12]
    return f"open_vocab_{digest}"


def set_vocabulary(model: nn.Module, names: Sequence[str], *,
                   embeddings: Union[None, str, torch.Tensor, ClassEmbeddings] = None,
                   encoder: Optional[TextEncoder] = None,
                   templates: Sequence[str] = CLIP_TEMPLATES, cache_dir: Optional[str] = None,
                   metadata_name: Optional[str] = None) -> Metadata:
    """Makes ``model`` detect exactly the classes ``names``, atomically.

    Classifier weights, the number of classes (box predictor and ROI heads) and the class names
    (ROI heads and a ``MetadataCatalog`` entry used for drawing and evaluation) change together;
    every check runs before anything is modified, so a failed call leaves the model as it was.

    Args:
        model (nn.Module): a detector built with ``OpenVocabROIHeads``.
        names (Sequence[str]): the new vocabulary, in contiguous-id order.
        embeddings: precomputed [K, D] embeddings (a tensor, a :class:`ClassEmbeddings` or an
            embedding file), checked against ``names`` and the model's embedding size; or None to
            compute them with ``encoder``.
        encoder (TextEncoder or None): text encoder used when ``embeddings`` is None (it must be
            the one the model's classifier was trained with).
        templates (Sequence[str]): prompt templates for ``encoder``.
        cache_dir (str or None): text-embedding cache folder for ``encoder``.
        metadata_name (str or None): MetadataCatalog name to (re)define; by default
            ``open_vocab_<hash of names>``.

    Returns:
        Metadata: with ``thing_classes = names``; its name is also stored in
        ``model.open_vocab_metadata_name``.

    Raises:
        ClassEmbeddingError: no text-embedding classifier, a name/count/dimension mismatch, or a
            class count change with class-specific box regression or masks.
    """
    heads = find_open_vocab_heads(model)
    predictor: OpenVocabOutputLayers = heads.box_predictor
    names = [str(n) for n in names]
    if isinstance(embeddings, str):
        emb = load_text_embeddings(embeddings, names, predictor.embed_dim, "the vocabulary")
        matrix = emb.embeddings
    elif isinstance(embeddings, ClassEmbeddings):
        check_names(embeddings.names, names, "the given embeddings", "the vocabulary")
        matrix = embeddings.embeddings
    elif isinstance(embeddings, torch.Tensor):
        matrix = embeddings
    elif encoder is not None:
        if encoder.dim != predictor.embed_dim:
            raise ClassEmbeddingError(f"text encoder output size {encoder.dim} does not match the "
                                      f"model's embedding dimension {predictor.embed_dim}")
        matrix = cached_class_embeddings(names, encoder, templates, cache_dir).embeddings
    else:
        raise ClassEmbeddingError("set_vocabulary needs embeddings or a text encoder")
    if matrix.dim() != 2 or matrix.shape[0] != len(names):
        raise ClassEmbeddingError(f"embeddings of shape {tuple(matrix.shape)} do not fit "
                                  f"{len(names)} class names")
    if matrix.shape[1] != predictor.embed_dim:
        raise ClassEmbeddingError(f"embedding dimension {matrix.shape[1]} does not match the "
                                  f"model's {predictor.embed_dim}")
    if len(set(names)) != len(names):
        raise ClassEmbeddingError(f"duplicate class names in the vocabulary: {names}")
    if names != list(heads.class_names):
        if not predictor.cls_agnostic_bbox_reg:
            raise ClassEmbeddingError("changing the vocabulary needs class-agnostic box regression "
                                      "(MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True)")
        mask_pred = getattr(getattr(heads, "mask_head", None), "predictor", None)
        if getattr(heads, "mask_on", False) and mask_pred is not None and \
                mask_pred.out_channels != 1:
            raise ClassEmbeddingError("changing the vocabulary needs class-agnostic masks "
                                      "(MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK True)")
    name = metadata_name or _metadata_name(names)
    old = MetadataCatalog.get(name).get("thing_classes") if name in MetadataCatalog.list() else None
    if old is not None and list(old) != names:
        raise ClassEmbeddingError(f"metadata '{name}' already has other thing_classes")
    # All checks passed: swap everything together.
    predictor.set_class_embeddings(matrix)
    heads.num_classes = len(names)
    heads.class_names = list(names)
    meta = MetadataCatalog.get(name)
    if meta.get("thing_classes") is None:
        meta.set(thing_classes=list(names))
    getattr(model, "module", model).open_vocab_metadata_name = name
    logger.info("Vocabulary set to %d classes (metadata '%s')", len(names), name)
    return meta
