# Copyright (c) det_ext authors.
"""The LT-Shapes tiny vision-language model (``det_ext.pseudo``, ``tools/train_tiny_vl.py``) as a
class-name text encoder over the text-only BERT layers, with three poolings:

- ``"mean"`` (default): mean of the word-token states (no ``[CLS]``/``[SEP]``); every word of a
  compositional name ("dark yellow ring") contributes, which keeps names that share a colour apart
  (on the default world's tiny models, the nearest other class of a novel name has cosine
  0.82-0.93, against 0.95-0.996 with ``"proj"``; docs/open_vocab.md);
- ``"proj"``: ALBEF's contrastive text embedding ``text_proj(h_[CLS])``;
- ``"cls"``: the ``[CLS]`` state.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Sequence

import torch

from det_ext.utils.errors import ConfigInputError

from .text_encoders import TextEncoder, register_text_encoder

__all__ = ["TinyVLTextEncoder", "TINY_VL_TEMPLATES", "POOLINGS"]

POOLINGS = ("mean", "proj", "cls")

# Prompt templates in the style of LT-Shapes captions ("a picture of a red circle").
TINY_VL_TEMPLATES = ("a {}", "a picture of a {}", "an image showing a {}", "{}")


class TinyVLTextEncoder(TextEncoder):
    """Text tower of an ALBEF checkpoint written by ``tools/train_tiny_vl.py`` (word vocabulary in
    ``config["tokenizer_vocab"]``) or any ALBEF checkpoint with a given BERT ``vocab.txt``.

    Args:
        weights (str): the checkpoint file.
        vocab_file (str): BERT ``vocab.txt``; needed only when the checkpoint carries no vocabulary.
        device (str): torch device.
        pooling (str): "mean", "proj" or "cls" (see the module docstring).
    """

    kind = "tiny_vl"

    def __init__(self, weights: str, vocab_file: str = "", device: str = "cpu",
                 pooling: str = "mean"):
        from det_ext.pseudo import WordPieceTokenizer, clean_caption, load_albef_checkpoint

        if pooling not in POOLINGS:
            raise ConfigInputError(f"OPEN_VOCAB.TEXT_ENCODER.POOLING: '{pooling}' is not one of "
                                   f"{POOLINGS}")
        if not weights or not os.path.isfile(weights):
            raise ConfigInputError(f"OPEN_VOCAB.TEXT_ENCODER.WEIGHTS: tiny VL checkpoint not "
                                   f"found: {weights!r} (train it with tools/train_tiny_vl.py)")
        self.model, config = load_albef_checkpoint(weights, with_itc=True)
        self.model.to(device).eval()
        vocab = config.get("tokenizer_vocab")
        if vocab:
            self.tokenizer = WordPieceTokenizer(vocab)
        elif vocab_file:
            self.tokenizer = WordPieceTokenizer.from_file(vocab_file)
        else:
            raise ConfigInputError(f"{weights}: the checkpoint has no 'tokenizer_vocab'; "
                                   "give the BERT vocab.txt")
        self._clean = clean_caption
        self.device, self.weights = device, weights
        self.max_length = int(self.model.cfg.max_position)
        self.pooling = "cls" if pooling == "proj" and self.model.cfg.embed_dim == 0 else pooling
        self.dim = int(self.model.cfg.embed_dim if self.pooling == "proj"
                       else self.model.cfg.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        ids, mask = self.tokenizer.encode([self._clean(t) for t in texts], self.max_length)
        ids, mask = ids.to(self.device), mask.to(self.device)
        h = self.model.text_encoder(ids, mask, mode="text")  # [B, L, hidden]
        if self.pooling == "proj":
            return self.model.text_proj(h[:, 0]).float().cpu()
        if self.pooling == "cls":
            return h[:, 0].float().cpu()
        words = mask.clone().float()
        words[:, 0] = 0  # [CLS]
        words[torch.arange(len(ids)), mask.sum(1) - 1] = 0  # [SEP]
        pooled = (h * words[..., None]).sum(1) / words.sum(1, keepdim=True).clamp(min=1)
        return pooled.float().cpu()

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "weights": os.path.abspath(self.weights),
                "pooling": self.pooling}


register_text_encoder("tiny_vl",
                      lambda model, weights, device, pooling="mean": TinyVLTextEncoder(
                          weights, device=device, pooling=pooling),
                      TINY_VL_TEMPLATES)
