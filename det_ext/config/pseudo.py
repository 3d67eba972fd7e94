# Copyright (c) det_ext authors.
"""Config keys of the pseudo-box generator (``det_ext.pseudo``, tools/generate_pseudo_boxes.py)."""

from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_pseudo_config"]


def add_pseudo_config(cfg: CN) -> None:
    """Adds ``cfg.PSEUDO`` (pseudo-box generation) in place."""
    cfg.PSEUDO = CN()
    # Vision-language backend from det_ext.pseudo.backends.VL_BACKEND_REGISTRY:
    # "AlbefBackend", "BlipBackend" or "ClipBackend".
    cfg.PSEUDO.BACKEND = "AlbefBackend"
    # Torch device of the VL model and of the proposal model ("cpu", "cuda").
    cfg.PSEUDO.DEVICE = "cpu"
    # Images per batch; each batch runs one forward and one backward pass for all its captions.
    cfg.PSEUDO.BATCH_SIZE = 16
    # Use PB-OVD's per-image loop (one backward per caption) instead of one batched backward;
    # for parity tests and throughput comparison only.
    cfg.PSEUDO.PER_IMAGE_REFERENCE = False
    # Map of a multi-token name from its token rows (ALBEF, BLIP): "sum" (PB-OVD) or "geomean"
    # (geometric mean of the min-max normalised rows: active where every word of the name is).
    cfg.PSEUDO.SPAN_POOL = "sum"

    cfg.PSEUDO.ALBEF = CN()
    # ALBEF checkpoint (.pth, pre-training format with "model" or fine-tuned bare state dict).
    cfg.PSEUDO.ALBEF.CHECKPOINT = ""
    # BERT vocab.txt; empty: the checkpoint's config["tokenizer_vocab"] (det_ext's tiny model).
    cfg.PSEUDO.ALBEF.VOCAB_FILE = ""
    # Input resolution; 0: the checkpoint's (256 for ALBEF.pth: use it, see salesforce/ALBEF#25).
    cfg.PSEUDO.ALBEF.IMAGE_SIZE = 0
    # Cross-attention layer for Grad-CAM, counted from the first fusion layer: 2 = the third
    # multimodal layer, ALBEF's localisation layer (BERT layer 8 of ALBEF-base).
    cfg.PSEUDO.ALBEF.CAM_FUSION_LAYER = 2
    # Captions are truncated to this many tokens including [CLS] and [SEP].
    cfg.PSEUDO.ALBEF.MAX_TEXT_LEN = 30
    # Word map: "gradcam" (PB-OVD: attention x relu(gradient of the ITM score)) or "attention"
    # (the cross-attention alone, no backward pass).
    cfg.PSEUDO.ALBEF.CAM_MODE = "gradcam"

    cfg.PSEUDO.BLIP = CN()
    # Folder of a transformers BlipForImageTextRetrieval (config.json + weights) and its processor.
    cfg.PSEUDO.BLIP.MODEL_DIR = ""
    # Text-encoder layer whose cross-attention is used (BLIP-base: 12 layers, all with cross-attn).
    cfg.PSEUDO.BLIP.CAM_LAYER = 8
    # Captions are truncated to this many tokens.
    cfg.PSEUDO.BLIP.MAX_TEXT_LEN = 35

    cfg.PSEUDO.CLIP = CN()
    # open_clip architecture name (e.g. "ViT-B-32").
    cfg.PSEUDO.CLIP.MODEL_NAME = "ViT-B-32"
    # open_clip checkpoint file (state dict); "" keeps random weights (tests only).
    cfg.PSEUDO.CLIP.CHECKPOINT = ""
    # Prompt for a matched word: the word's text embedding is that of this template.
    cfg.PSEUDO.CLIP.PROMPT = "a photo of a {}."

    cfg.PSEUDO.MATCHING = CN()
    # Ground every occurrence of a name (PB-OVD: only the first).
    cfg.PSEUDO.MATCHING.ALL_OCCURRENCES = True
    # Drop a match inside a longer match of another category ("red circle" in "dark red circle").
    cfg.PSEUDO.MATCHING.PREFER_LONGEST = True
    # Add plural and singular forms of every surface form.
    cfg.PSEUDO.MATCHING.AUTO_PLURALS = True
    # Boxes per mention follow its number word ("three circles" -> up to 3), capped here; 1
    # reproduces PB-OVD's one box per (image, category).
    cfg.PSEUDO.MATCHING.MAX_COUNT = 1

    cfg.PSEUDO.PROPOSALS = CN()
    # Precomputed proposals JSON {image_id: [[x0, y0, x1, y1, score], ...]}; overrides the model.
    cfg.PSEUDO.PROPOSALS.FILE = ""
    # Detectron2 config and weights of the proposal model (RPN or class-agnostic detector).
    cfg.PSEUDO.PROPOSALS.CONFIG_FILE = ""
    cfg.PSEUDO.PROPOSALS.WEIGHTS = ""
    # "rpn": the model's RPN proposals; "detector": its detections with class-agnostic NMS.
    cfg.PSEUDO.PROPOSALS.MODE = "rpn"
    # Proposals kept per image after NMS (0: all).
    cfg.PSEUDO.PROPOSALS.TOPK = 100
    # Class-agnostic NMS IoU for MODE "detector".
    cfg.PSEUDO.PROPOSALS.NMS_THRESH = 0.5

    cfg.PSEUDO.SELECTION = CN()
    # Box score = activation inside / area ** ALPHA (PB-OVD: 0.5).
    cfg.PSEUDO.SELECTION.ALPHA = 0.5
    # Map values below THRESHOLD x max are zeroed after min-max normalisation (PB-OVD: 0.5).
    cfg.PSEUDO.SELECTION.MAP_THRESHOLD = 0.5
    # Boxes whose pseudo_score (share of the activation inside the box) is lower are dropped.
    cfg.PSEUDO.SELECTION.MIN_SCORE = 0.0
    # Box score x (proposal score, e.g. RPN objectness) ** WEIGHT; 0 ignores proposal scores
    # (PB-OVD).
    cfg.PSEUDO.SELECTION.PROPOSAL_SCORE_WEIGHT = 0.0
