# Copyright (c) det_ext authors.
"""Random ALBEF checkpoints in the real formats, for tests and the throughput benchmark."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .albef import AlbefConfig, AlbefITM
from .checkpoint import save_albef_checkpoint

__all__ = ["random_albef_checkpoint", "albef_base_config"]


def albef_base_config(vocab_size: int = 30522, image_size: int = 256) -> AlbefConfig:
    """ALBEF-base: ViT-B/16 + BERT-base with 6 fusion layers."""
    return AlbefConfig(image_size=image_size, vocab_size=vocab_size)


def random_albef_checkpoint(
    path: str,
    cfg: AlbefConfig,
    vocab: Optional[Sequence[str]] = None,
    pretrain_format: bool = True,
    with_momentum: bool = True,
    seed: int = 0,
) -> AlbefITM:
    """Writes a randomly initialised ALBEF checkpoint like ``ALBEF.pth`` (pre-training layout with
    momentum encoders, queues and an MLM head) or like ``refcoco.pth`` (bare state dict).

    Returns:
        AlbefITM: the model whose weights were written.
    """
    torch.manual_seed(seed)
    model = AlbefITM(cfg).eval()
    for p in model.parameters():  # BERT-style init for informative maps in tests
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.2)
    extra = {}
    config = {"image_res": cfg.image_size}
    if vocab is not None:
        config["tokenizer_vocab"] = list(vocab)
    save_albef_checkpoint(model, path, config=config, pretrain_format=pretrain_format)
    if with_momentum or not pretrain_format:
        obj = torch.load(path, map_location="cpu", weights_only=False)
        state = obj["model"] if pretrain_format else obj
        if with_momentum:
            for k in list(state):
                head = k.split(".")[0]
                if head in ("visual_encoder", "text_encoder", "vision_proj", "text_proj"):
                    state[k.replace(head, head + "_m", 1)] = state[k].clone()
            d = max(cfg.embed_dim, 1)
            state["image_queue"] = torch.randn(d, 8)
            state["text_queue"] = torch.randn(d, 8)
            state["queue_ptr"] = torch.zeros(1, dtype=torch.long)
            state["text_encoder.cls.predictions.bias"] = torch.zeros(cfg.vocab_size)
        if pretrain_format:
            obj.update(extra, optimizer={}, lr_scheduler={}, epoch=0)
        torch.save(obj, path)
    return model
