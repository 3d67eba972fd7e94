# Copyright (c) det_ext authors.
"""Open-vocabulary detection: a box predictor whose classifier is a frozen matrix of class text
embeddings, text encoders to build those embeddings, and one-call vocabulary swapping."""
from .embeddings import (
    ClassEmbeddingError,
    ClassEmbeddings,
    check_names,
    load_text_embeddings,
    save_text_embeddings,
)
from .predictor import OpenVocabOutputLayers, TextEmbeddingClassifier
from .roi_heads import OpenVocabROIHeads, dataset_class_names, load_train_embeddings
from .text_encoders import (
    CLIP_TEMPLATES,
    HFClipTextEncoder,
    OpenClipTextEncoder,
    TextEncoder,
    build_text_encoder,
    cached_class_embeddings,
    compute_class_embeddings,
    default_templates,
    register_text_encoder,
)
from .vocabulary import find_open_vocab_heads, get_vocabulary, parse_vocabulary, set_vocabulary

__all__ = [
    "ClassEmbeddings", "ClassEmbeddingError", "check_names", "load_text_embeddings",
    "save_text_embeddings", "OpenVocabOutputLayers", "TextEmbeddingClassifier",
    "OpenVocabROIHeads", "dataset_class_names", "load_train_embeddings", "TextEncoder",
    "OpenClipTextEncoder", "HFClipTextEncoder", "build_text_encoder", "register_text_encoder",
    "compute_class_embeddings", "default_templates", "cached_class_embeddings", "CLIP_TEMPLATES",
    "set_vocabulary", "get_vocabulary", "find_open_vocab_heads", "parse_vocabulary",
]

from . import tiny_vl  # noqa: F401,E402  (registers the "tiny_vl" text encoder)
from det_ext.data.open_vocab import register_all_open_vocab  # noqa: E402
from det_ext.engine import open_vocab_eval  # noqa: F401,E402  (registers OpenVocabTrainer)

register_all_open_vocab()
