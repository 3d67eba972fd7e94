# Copyright (c) det_ext authors.
"""Training of a tiny ALBEF-style model on LT-Shapes captions (CPU, minutes).

Model: ViT (8 px patches on 128 px images, 16x16 map, width 96, 3 blocks) + word-level BERT with 2
text layers and 3 fusion layers + ITM head + contrastive projections. Losses (ALBEF): image-text
contrastive (ITC) with a learnable temperature, and image-text matching (ITM) on the positives, on
hard negatives sampled
from the contrastive similarities (ALBEF) and on *swapped* negatives (the positive caption with one
mentioned category replaced by another one's surface form), which force word-level grounding.
Captions that are true for an image (every category they mention is mentioned by the image's own
captions) are never used as its negatives. The checkpoint is written in ALBEF's pre-training format
(``{"model", "optimizer", "config", "epoch"}``, ``text_encoder.bert.*`` keys) with the word
vocabulary under ``config["tokenizer_vocab"]``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from det_ext.utils.errors import DatasetFormatError

from .albef import AlbefConfig, AlbefITM
from .backends.base import preprocess_images
from .checkpoint import load_albef_checkpoint, save_albef_checkpoint
from .matching import CaptionMatcher, Vocabulary, pluralize, singularize
from .text import SPECIAL_TOKENS, WordPieceTokenizer, clean_caption

__all__ = ["TinyVLOptions", "tiny_albef_config", "build_word_vocab", "CaptionData", "train_tiny_vl"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TinyVLOptions:
    """Training options (the run stops, with its learning rate fully decayed, after ``max_iter``
    iterations or ``max_minutes`` minutes, whichever comes first)."""

    max_iter: int = 1000
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.02
    warmup: int = 50
    max_text_len: int = 40
    swap_fraction: float = 0.5
    mlm_weight: float = 1.0
    mlm_prob: float = 0.25
    seed: int = 0
    max_minutes: float = 15.0
    checkpoint_period: int = 200
    num_threads: int = 0


def tiny_albef_config(vocab_size: int, image_size: int = 128) -> AlbefConfig:
    """The tiny architecture (about 0.9 M parameters): 8 px patches (16x16 map at 128 px), width 96,
    3 ViT blocks, 2 text + 3 fusion layers, 4 heads."""
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
    )


def build_word_vocab(captions: Sequence[str], extra_phrases: Sequence[str] = ()) -> List[str]:
    """Word-level tokenizer vocabulary: specials, then words by decreasing frequency."""
    counts: Counter = Counter()
    basic = WordPieceTokenizer(list(SPECIAL_TOKENS))
    for text in list(captions) + list(extra_phrases):
        counts.update(basic._basic(clean_caption(text)))
    return list(SPECIAL_TOKENS) + [
        w for w, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))
    ]


class CaptionData:
    """Images (uint8, in memory), captions, their category mentions and negative sampling."""

    def __init__(
        self,
        captions_file: str,
        image_root: str,
        vocab_file: str,
        dataset_json: Optional[str] = None,
        tokenizer: Optional[WordPieceTokenizer] = None,
    ):
        with open(captions_file) as f:
            entries = json.load(f)
        cats = None
        if dataset_json:
            with open(dataset_json) as f:
                cats = json.load(f)["categories"]
        self.vocabulary = Vocabulary.load(vocab_file, cats)
        self.captions: List[List[str]] = [
            [clean_caption(c) for c in e["captions"]] for e in entries
        ]
        forms = [f for c in self.vocabulary.categories for f in c.forms]
        self.tokenizer = tokenizer or WordPieceTokenizer(
            build_word_vocab([c for cs in self.captions for c in cs], forms)
        )
        images = []
        for e in entries:
            path = os.path.join(image_root, e["file_name"])
            if not os.path.isfile(path):
                raise DatasetFormatError(f"{captions_file}: image {path} not found")
            images.append(np.asarray(Image.open(path).convert("RGB")))
        self.images = images
        self.matcher = CaptionMatcher(self.vocabulary, self.tokenizer.tokenize)
        self.mentions = [
            [self.matcher.match(self.tokenizer.tokenize(c)) for c in cs] for cs in self.captions
        ]
        self.image_cats = [set(m.category_id for ms in per for m in ms) for per in self.mentions]
        self.forms_by_cat: Dict[int, Tuple[List[str], List[str]]] = {}
        for c in self.vocabulary.categories:
            sing = [f for f in c.forms if singularize(f) == f]
            plur = [f for f in c.forms if singularize(f) != f and pluralize(singularize(f)) == f]
            self.forms_by_cat[c.id] = (sing or c.forms, plur or c.forms)

    def __len__(self) -> int:
        return len(self.images)

    def caption_true_for(self, caption_cats: set, caption: str, image: int) -> bool:
        if caption_cats:
            return caption_cats <= self.image_cats[image]
        return caption in self.captions[image]

    def swapped(self, image: int, cap: int, rng: np.random.Generator) -> Optional[str]:
        """The caption with one mention replaced by a category absent from the image."""
        mentions = self.mentions[image][cap]
        if not mentions:
            return None
        m = mentions[int(rng.integers(len(mentions)))]
        tokens = self.tokenizer.tokenize(self.captions[image][cap])
        others = [c.id for c in self.vocabulary.categories if c.id not in self.image_cats[image]]
        if not others:
            return None
        # prefer categories sharing a word with the replaced form (same colour or shape)
        words = set(m.form.split())
        weights = np.array(
            [3.0 if words & set(self.vocabulary.by_id[o].name.split()) else 1.0 for o in others]
        )
        new = others[int(rng.choice(len(others), p=weights / weights.sum()))]
        plural = singularize(m.form) != m.form
        forms = self.forms_by_cat[new][1 if plural else 0]
        form = forms[int(rng.integers(len(forms)))]
        return " ".join(tokens[: m.left - 1] + [form] + tokens[m.right - 1 :])


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


class MlmHead(torch.nn.Module):
    """BERT-style masked-language-model head (transform + decoder) over the multimodal states."""

    def __init__(self, hidden: int, vocab_size: int):
        super().__init__()
        self.dense = torch.nn.Linear(hidden, hidden)
        self.norm = torch.nn.LayerNorm(hidden, eps=1e-12)
        self.decoder = torch.nn.Linear(hidden, vocab_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(h))))


def _mlm_loss(
    model: AlbefITM,
    data: "CaptionData",
    ids: torch.Tensor,
    mask: torch.Tensor,
    img: torch.Tensor,
    opts: "TinyVLOptions",
) -> torch.Tensor:
    """Image-conditioned MLM (ALBEF): 80% [MASK], 10% random word, 10% kept."""
    tok = data.tokenizer
    cand = (mask == 1) & (ids != tok.cls_id) & (ids != tok.sep_id)
    sel = (torch.rand(ids.shape) < opts.mlm_prob) & cand
    if not bool(sel.any()):
        return img.sum() * 0.0
    labels = torch.full_like(ids, -100)
    labels[sel] = ids[sel]
    r = torch.rand(ids.shape)
    masked = ids.clone()
    masked[sel & (r < 0.8)] = tok.token_to_id["[MASK]"]
    rand = sel & (r >= 0.8) & (r < 0.9)
    masked[rand] = torch.randint(len(SPECIAL_TOKENS), len(tok.vocab), ids.shape)[rand]
    h = model.text_encoder(masked, mask, img, mode="multi_modal")
    logits = model.mlm_head(h)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
    )


def _train_step(
    model: AlbefITM,
    data: CaptionData,
    idx: np.ndarray,
    rng: np.random.Generator,
    opts: TinyVLOptions,
) -> Dict[str, float]:
    b = len(idx)
    caps = [int(rng.integers(len(data.captions[i]))) for i in idx]
    texts = [data.captions[i][c] for i, c in zip(idx, caps)]
    text_cats = [set(m.category_id for m in data.mentions[i][c]) for i, c in zip(idx, caps)]
    pixels = preprocess_images([data.images[i] for i in idx], model.cfg.image_size)
    ids, mask = data.tokenizer.encode(texts, opts.max_text_len)
    img = model.visual_encoder(pixels)
    txt = model.text_encoder(ids, mask, mode="text")
    img_feat = F.normalize(model.vision_proj(img[:, 0]), dim=-1)
    txt_feat = F.normalize(model.text_proj(txt[:, 0]), dim=-1)
    with torch.no_grad():
        model.temp.clamp_(0.001, 0.5)
    sim = img_feat @ txt_feat.t() / model.temp  # [images, texts]
    pos = torch.tensor(
        [
            [float(data.caption_true_for(text_cats[j], texts[j], int(idx[i]))) for j in range(b)]
            for i in range(b)
        ]
    )
    pos.fill_diagonal_(1.0)
    loss_itc = 0.5 * (
        -(F.log_softmax(sim, 1) * (pos / pos.sum(1, keepdim=True))).sum(1).mean()
        - (F.log_softmax(sim.t(), 1) * (pos.t() / pos.t().sum(1, keepdim=True))).sum(1).mean()
    )
    # hard negatives from the contrastive similarities (false negatives masked out)
    with torch.no_grad():
        w_t2i = F.softmax(sim.t().float(), 1).masked_fill(pos.t() > 0, 0) + 1e-8 * (1 - pos.t())
        w_i2t = F.softmax(sim.float(), 1).masked_fill(pos > 0, 0) + 1e-8 * (1 - pos)
    neg_img, neg_txt = [], []
    for j in range(b):
        neg_img.append(int(torch.multinomial(w_t2i[j], 1)) if w_t2i[j].sum() > 0 else (j + 1) % b)
    for i in range(b):
        swapped = (
            data.swapped(int(idx[i]), caps[i], rng) if rng.random() < opts.swap_fraction else None
        )
        if swapped is not None:
            neg_txt.append(swapped)
        else:
            j = int(torch.multinomial(w_i2t[i], 1)) if w_i2t[i].sum() > 0 else (i + 1) % b
            neg_txt.append(texts[j])
    neg_ids, neg_mask = data.tokenizer.encode(neg_txt, opts.max_text_len)
    length = max(ids.shape[1], neg_ids.shape[1])
    ids_all = torch.cat(
        [
            F.pad(ids, (0, length - ids.shape[1])),
            F.pad(ids, (0, length - ids.shape[1])),
            F.pad(neg_ids, (0, length - neg_ids.shape[1])),
        ]
    )
    mask_all = torch.cat(
        [
            F.pad(mask, (0, length - mask.shape[1])),
            F.pad(mask, (0, length - mask.shape[1])),
            F.pad(neg_mask, (0, length - neg_mask.shape[1])),
        ]
    )
    img_all = torch.cat([img, img[neg_img], img])
    logits = model.itm_logits(img_all, ids_all, mask_all)
    labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long()
    loss_itm = F.cross_entropy(logits, labels)
    loss = loss_itc + loss_itm
    loss_mlm = torch.zeros(())
    if opts.mlm_weight > 0:
        loss_mlm = _mlm_loss(model, data, ids, mask, img, opts)
        loss = loss + opts.mlm_weight * loss_mlm
    loss.backward()
    acc = (logits.argmax(1) == labels).float().mean().item()
    return {
        "loss_itc": loss_itc.item(),
        "loss_itm": loss_itm.item(),
        "itm_acc": acc,
        "loss_mlm": float(loss_mlm),
    }


def train_tiny_vl(
    captions_file: str,
    image_root: str,
    vocab_file: str,
    out_dir: str,
    opts: TinyVLOptions,
    dataset_json: Optional[str] = None,
    resume: bool = True,
) -> str:
    """Trains the tiny model and writes ``out_dir/tiny_albef.pth`` (+ ``vocab.txt``).

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
    model = AlbefITM(tiny_albef_config(len(data.tokenizer.vocab), data.images[0].shape[0]))
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
        stats = _train_step(model, data, idx, rng, opts)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optim.step()
        elapsed = time.perf_counter() - t0 + elapsed_before
        if it % 20 == 0 or it + 1 == opts.max_iter:
            per_it = (elapsed - elapsed_before) / (it - start + 1)
            eta = min(per_it * (opts.max_iter - it - 1), max(0.0, opts.max_minutes * 60 - elapsed))
            logger.info(
                "iter %d/%d  itc %.3f  itm %.3f  mlm %.3f  itm_acc %.3f  lr %.2e  %.2f s/it  "
                "eta %.0f s",
                it + 1,
                opts.max_iter,
                stats["loss_itc"],
                stats["loss_itm"],
                stats["loss_mlm"],
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
            "train_captions": os.path.abspath(captions_file),
        },
        extra={"optimizer": optim.state_dict(), "epoch": 0},
    )
    with open(os.path.join(out_dir, "vocab.txt"), "w") as f:
        f.write("\n".join(data.tokenizer.vocab) + "\n")
    load_albef_checkpoint(ckpt)  # round-trip check of the written file
    logger.info("Wrote %s", ckpt)
    return ckpt
