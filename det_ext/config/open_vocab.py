# Copyright (c) det_ext authors.
"""Config keys of the open-vocabulary detector (``OPEN_VOCAB.*``); see docs/open_vocab.md."""
from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_open_vocab_config"]


def add_open_vocab_config(cfg: CN) -> None:
    """Adds ``cfg.OPEN_VOCAB`` (used with ``MODEL.ROI_HEADS.NAME "OpenVocabROIHeads"``)."""
    cfg.OPEN_VOCAB = CN()
    # Class text-embedding file of the training vocabulary (tools/build_text_embeddings.py); its
    # names must equal DATASETS.TRAIN[0]'s classes and its size MODEL.ROI_HEADS.NUM_CLASSES.
    cfg.OPEN_VOCAB.TRAIN_EMBEDDINGS = ""
    # Embedding file of the test vocabulary, checked against every DATASETS.TEST dataset and
    # swapped in for evaluation by OpenVocabTrainer ("": the training file).
    cfg.OPEN_VOCAB.TEST_EMBEDDINGS = ""
    # Expected text-embedding size D, checked against the files (0: take it from the file).
    cfg.OPEN_VOCAB.EMBED_DIM = 0
    # L2-normalise projected RoI features and class embeddings (cosine logits / TEMPERATURE).
    # PB-OVD: False (raw dot product with unit-norm CLIP text vectors).
    cfg.OPEN_VOCAB.NORMALIZE = False
    # Softmax temperature of normalised logits (0.02 = scale 50, as Detic); unused without
    # NORMALIZE.
    cfg.OPEN_VOCAB.TEMPERATURE = 0.02
    # Background embedding, placed last as Detectron2 expects: "zero" (PB-OVD: logit 0) or
    # "learned".
    cfg.OPEN_VOCAB.BACKGROUND = "zero"
    # Cross-entropy weight of background RoIs (classes weigh 1). PB-OVD: 0.2.
    cfg.OPEN_VOCAB.BG_LOSS_WEIGHT = 0.2
    # Freeze the RoI-feature-to-embedding projection (PB-OVD fine-tuning on base classes: True).
    cfg.OPEN_VOCAB.FREEZE_PROJECTION = False
    cfg.OPEN_VOCAB.TEXT_ENCODER = CN()
    # Text encoder for custom vocabularies (tools/predict.py): "tiny_vl", "open_clip", "hf_clip".
    cfg.OPEN_VOCAB.TEXT_ENCODER.NAME = "tiny_vl"
    # Its local weights: tiny VL checkpoint file, open_clip checkpoint file, or a transformers
    # CLIP folder (config, weights and tokenizer files).
    cfg.OPEN_VOCAB.TEXT_ENCODER.WEIGHTS = ""
    # open_clip architecture name (e.g. "ViT-B-32"); unused by the other encoders.
    cfg.OPEN_VOCAB.TEXT_ENCODER.MODEL = "ViT-B-32"
    # Pooling of the tiny VL text encoder: "mean" (word-token states; keeps compositional names
    # apart), "proj" (ALBEF's contrastive text_proj([CLS])) or "cls"; unused by the CLIP encoders.
    cfg.OPEN_VOCAB.TEXT_ENCODER.POOLING = "mean"
    # Prompt templates averaged over ({} = class name); empty: the encoder family's default.
    cfg.OPEN_VOCAB.TEXT_ENCODER.TEMPLATES = []
    # Folder caching computed vocabularies' embeddings ("": no cache).
    cfg.OPEN_VOCAB.TEXT_ENCODER.CACHE_DIR = ""
