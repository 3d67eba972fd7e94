# Copyright (c) det_ext authors.
"""Training of a tiny ALBEF-style model on LT-Shapes captions (CPU, minutes).

Model: ViT (overlapping 24 px patches at 8 px stride on 128 px images, 16x16 map, width 96, 3
blocks with local attention) + word-level BERT with 2 text layers and 3 fusion layers (local word
attention) + ITM head + contrastive projections. Losses (ALBEF): image-text contrastive (ITC) with
a learnable temperature, image-text matching (ITM) on the positives, on hard negatives sampled from
the contrastive similarities (ALBEF) and on *swapped* negatives (the positive caption with one
mentioned category replaced by another one's surface form), image-conditioned MLM, plus det_ext's
word-region grounding loss (:func:`det_ext.pseudo.tiny_vl_losses.grounding_loss`). Captions that
are true for an image (every category they mention is mentioned by the image's own captions) are
never used as its negatives.
docs/pseudo_boxes.md explains and measures the departures from ALBEF. The checkpoint is written in
ALBEF's pre-training format (``{"model", "optimizer", "config", "epoch"}``, ``text_encoder.bert.*``
keys) with the word vocabulary under ``config["tokenizer_vocab"]``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .albef import AlbefConfig, AlbefITM
from .checkpoint import load_albef_checkpoint, save_albef_checkpoint
from .tiny_vl_data import CaptionData, build_word_vocab
from .tiny_vl_losses import MlmHead, train_step

__all__ = ["TinyVLOptions", "tiny_albef_config", "build_word_vocab", "CaptionData", "train_tiny_vl"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TinyVLOptions:
    """Training options (the run stops, with its learning rate fully decayed, after ``max_iter``
    iterations or ``max_minutes`` minutes, whichever comes first)."""

    max_iter: int = 1300
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.02
    warmup: int = 50
    max_text_len: int = 40
    swap_fraction: float = 0.5
    mlm_weight: float = 1.0
    mlm_prob: float = 0.25
    seed: int = 0
    max_minutes: float = 14.0
    checkpoint_period: int = 200
    num_threads: int = 0
    # random flips and 90-degree rotations of the training images (LT-Shapes captions hold no
    # true spatial words: their "above"/"below" are random relations, so the captions stay true)
    augment: bool = True
    # patch-embedding kernel (0: the 8 px patch; 24: overlapping patches; see AlbefConfig)
    patch_kernel: int = 24
    # local ViT attention radius in grid cells (-1: ALBEF's global attention; see AlbefConfig)
    local_radius: int = 1
    # whether the fusion layers' cross-attention sees the image [CLS] token (ALBEF: True)
    fusion_image_cls: bool = False
    # local self-attention windows of the text-only and the fusion layers (-1: global, ALBEF)
    text_window: int = 0
    fusion_window: int = 1
    # weight of the word-region grounding loss on the first fusion layer's cross-attention
    # logits (multiple-instance contrast of category mentions against the batch's images; 0: off)
    ground_weight: float = 1.0


def tiny_albef_config(
    vocab_size: int,
    image_size: int = 128,
    patch_kernel: int = 0,
    local_radius: int = -1,
    fusion_image_cls: bool = True,
    text_window: int = -1,
    fusion_window: int = -1,
) -> AlbefConfig:
    """The tiny architecture (about 0.9 M parameters): 8 px patches (16x16 map at 128 px), width 96,
    3 ViT blocks, 2 text + 3 fusion layers, 4 heads; ``patch_kernel``, ``local_radius``,
    ``fusion_image_cls`` and the windows as in :class:`AlbefConfig`."""
    return AlbefConfig(
        image_size=image_size,
        patch_size=8,
        vision_width=96,
        vision_depth=3,
        vision_heads=4,
        mlp_ratio=4.0,
        vocab_size=vocab_size,
        hidden_size=96,
        num_layers=5,
        num_heads=4,
        intermediate_size=384,
        fusion_layer=2,
        max_position=64,
        embed_dim=64,
        patch_kernel=patch_kernel,
        vision_local_radius=local_radius,
        fusion_image_cls=fusion_image_cls,
        text_window=text_window,
        fusion_window=fusion_window,
    )


def _cosine_lr(it: int, opts: TinyVLOptions, elapsed: float = 0.0) -> float:
    """Warm-up, then cosine decay over whichever budget (iterations or time) runs out first, so a
    slow machine still ends the schedule properly within ``max_minutes``."""
    if it < opts.warmup:
        return opts.lr * (it + 1) / opts.warmup
    p = max(
        (it - opts.warmup) / max(1, opts.max_iter - opts.warmup),
        elapsed / (opts.max_minutes * 60.0),
    )
    return opts.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def train_tiny_vl(
    captions_file: Union[str, Sequence[str]],
    image_root: Union[str, Sequence[str]],
    vocab_file: str,
    out_dir: str,
    opts: TinyVLOptions,
    dataset_json: Optional[str] = None,
    resume: bool = True,
) -> str:
    """Trains the tiny model and writes ``out_dir/tiny_albef.pth`` (+ ``vocab.txt``).

    ``captions_file`` / ``image_root`` may list several sources (see :class:`CaptionData`).

    Resumable: ``out_dir/last_state.pth`` (model, optimizer, iteration, random state) is written
    every ``checkpoint_period`` iterations and picked up by a rerun.

    Returns:
        str: path of the final checkpoint.
    """
    if opts.num_threads:
        torch.set_num_threads(opts.num_threads)
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    data = CaptionData(captions_file, image_root, vocab_file, dataset_json)
    model = AlbefITM(
        tiny_albef_config(
            len(data.tokenizer.vocab),
            data.images[0].shape[0],
            opts.patch_kernel,
            opts.local_radius,
            opts.fusion_image_cls,
            opts.text_window,
            opts.fusion_window,
        )
    )
    if opts.mlm_weight > 0:  # saved as extra "mlm_head.*" keys, ignored by the loader
        model.add_module("mlm_head", MlmHead(model.cfg.hidden_size, model.cfg.vocab_size))
    optim = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    os.makedirs(out_dir, exist_ok=True)
    state_path = os.path.join(out_dir, "last_state.pth")
    start, elapsed_before = 0, 0.0
    if resume and os.path.isfile(state_path):
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        optim.load_state_dict(st["optimizer"])
        rng.bit_generator.state = st["rng"]
        torch.set_rng_state(st["torch_rng"])
        start = st["iter"]
        elapsed_before = st.get("elapsed", 0.0)
        logger.info("Resuming tiny VL training from iteration %d", start)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "Tiny ALBEF: %d parameters, %d words, %d images",
        n_params,
        len(data.tokenizer.vocab),
        len(data),
    )
    model.train()
    t0 = time.perf_counter()
    order = rng.permutation(len(data))
    pos = 0
    for it in range(start, opts.max_iter):
        if pos + opts.batch_size > len(order):
            order, pos = rng.permutation(len(data)), 0
        idx = order[pos : pos + opts.batch_size]
        pos += opts.batch_size
        lr = _cosine_lr(it, opts, time.perf_counter() - t0 + elapsed_before)
        for g in optim.param_groups:
            g["lr"] = lr
        optim.zero_grad(set_to_none=True)
        stats = train_step(model, data, idx, rng, opts)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optim.step()
        elapsed = time.perf_counter() - t0 + elapsed_before
        if it % 20 == 0 or it + 1 == opts.max_iter:
            per_it = (elapsed - elapsed_before) / (it - start + 1)
            eta = min(per_it * (opts.max_iter - it - 1), max(0.0, opts.max_minutes * 60 - elapsed))
            logger.info(
                "iter %d/%d  itc %.3f  itm %.3f  mlm %.3f  ground %.3f  itm_acc %.3f  lr %.2e  "
                "%.2f s/it  eta %.0f s",
                it + 1,
                opts.max_iter,
                stats["loss_itc"],
                stats["loss_itm"],
                stats["loss_mlm"],
                stats["loss_ground"],
                stats["itm_acc"],
                lr,
                per_it,
                eta,
            )
        last = it + 1 == opts.max_iter or elapsed > opts.max_minutes * 60
        if (it + 1) % opts.checkpoint_period == 0 or last:
            tmp = state_path + ".tmp"
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optim.state_dict(),
                    "iter": it + 1,
                    "elapsed": elapsed,
                    "rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                },
                tmp,
            )
            os.replace(tmp, state_path)
        if last and it + 1 < opts.max_iter:
            logger.warning(
                "time budget of %.1f min reached at iteration %d/%d: stopping early",
                opts.max_minutes,
                it + 1,
                opts.max_iter,
            )
            break
    model.eval()
    ckpt = os.path.join(out_dir, "tiny_albef.pth")
    save_albef_checkpoint(
        model,
        ckpt,
        config={
            "image_res": model.cfg.image_size,
            "tokenizer_vocab": data.tokenizer.vocab,
            "max_text_len": opts.max_text_len,
            "train_options": dataclasses.asdict(opts),
            "train_captions": [os.path.abspath(f) for f in data.captions_files],
        },
        extra={"optimizer": optim.state_dict(), "epoch": 0},
    )
    with open(os.path.join(out_dir, "vocab.txt"), "w") as f:
        f.write("\n".join(data.tokenizer.vocab) + "\n")
    load_albef_checkpoint(ckpt)  # round-trip check of the written file
    logger.info("Wrote %s", ckpt)
    return ckpt
