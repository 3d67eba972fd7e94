# Copyright (c) det_ext authors.
"""Building class text-embedding files (the library side of ``tools/build_text_embeddings.py``)."""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence

from det_ext.utils.errors import DetExtInputError

from .embeddings import ClassEmbeddings, save_text_embeddings
from .roi_heads import dataset_class_names
from .text_encoders import build_text_encoder, compute_class_embeddings, default_templates

__all__ = ["resolve_class_names", "build_embeddings_file"]

logger = logging.getLogger(__name__)


def resolve_class_names(names: Optional[Sequence[str]] = None, dataset: str = "",
                        names_file: str = "") -> List[str]:
    """Class names from exactly one source: a list, a registered dataset's classes (contiguous
    order), or a text file with one name per line.

    Raises:
        DetExtInputError: no source or several, or an empty list.
    """
    given = [bool(names), bool(dataset), bool(names_file)]
    if sum(given) != 1:
        raise DetExtInputError("give exactly one of --names, --dataset or --names-file")
    if dataset:
        from det_ext.data.datasets import prepare_datasets

        prepare_datasets([dataset])
        out = dataset_class_names(dataset)
    elif names_file:
        try:
            with open(names_file, encoding="utf-8") as f:
                out = [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise DetExtInputError(f"{names_file}: cannot read class names ({e})") from None
    else:
        out = [str(n).strip() for n in names if str(n).strip()]
    if not out:
        raise DetExtInputError("the class-name list is empty")
    return out


def build_embeddings_file(out: str, names: Sequence[str], encoder: str, weights: str = "",
                          model: str = "ViT-B-32", templates: Optional[Sequence[str]] = None,
                          device: str = "cpu", pooling: str = "mean") -> ClassEmbeddings:
    """Embeds ``names`` with a text encoder (prompt-template average) and writes the file.

    Args:
        out (str): output ``.pt`` file (atomic write).
        names (Sequence[str]): class names in contiguous-id order.
        encoder (str): "tiny_vl", "open_clip" or "hf_clip".
        weights (str): checkpoint file or transformers folder of the encoder.
        model (str): open_clip architecture.
        templates (Sequence[str] or None): prompt templates (None: the family's default).
        pooling (str): tiny VL pooling ("mean", "proj", "cls").

    Returns:
        ClassEmbeddings: what was written.
    """
    enc = build_text_encoder(encoder, weights, model, device, pooling=pooling)
    templates = list(templates) if templates else default_templates(encoder)
    emb = compute_class_embeddings(names, enc, templates)
    save_text_embeddings(out, emb)
    logger.info("Wrote %d class embeddings of dimension %d (%s, %d templates) to %s", len(emb),
                emb.dim, encoder, len(templates), out)
    return emb
