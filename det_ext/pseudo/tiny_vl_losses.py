# Copyright (c) det_ext authors.
"""Losses and the training step of the tiny vision-language model: ITC, ITM (hard and swapped
negatives), image-conditioned MLM and the word-region grounding loss."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from .albef import AlbefITM
from .backends.base import preprocess_images
from .text import SPECIAL_TOKENS
from .tiny_vl_data import CaptionData, flip_rotate

if TYPE_CHECKING:
    from .tiny_vl import TinyVLOptions

__all__ = ["MlmHead", "mlm_loss", "grounding_loss", "train_step"]


class MlmHead(torch.nn.Module):
    """BERT-style masked-language-model head (transform + decoder) over the multimodal states."""

    def __init__(self, hidden: int, vocab_size: int):
        super().__init__()
        self.dense = torch.nn.Linear(hidden, hidden)
        self.norm = torch.nn.LayerNorm(hidden, eps=1e-12)
        self.decoder = torch.nn.Linear(hidden, vocab_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(h))))


def mlm_loss(
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


def grounding_loss(
    model: AlbefITM,
    data: "CaptionData",
    idx: np.ndarray,
    caps: List[int],
    txt: torch.Tensor,
    mask: torch.Tensor,
    img: torch.Tensor,
) -> torch.Tensor:
    """Multiple-instance word-region contrast on the first fusion layer's cross-attention.

    For a category mention m (its tokens' mean query q_m, per head) and an image j, the score is
    the mean over heads of logsumexp over patches of q_m . k_j,p / sqrt(d): high when *some* patch
    of j matches the name. A cross-entropy over the batch's images pulls it up for the images whose
    captions name the category and down for the others, so the attention logits of the layer used
    for the word maps must peak on the named object.

    Args:
        txt (Tensor): text-encoder states [B, L, hidden] (the fusion layers' input).
        mask (Tensor): [B, L] token mask.
        img (Tensor): image tokens [B, 1 + N, width].
    """
    spans = [
        (b, m.left, m.right, m.category_id)
        for b, (i, c) in enumerate(zip(idx, caps))
        for m in data.mentions[int(i)][c]
    ]
    if not spans:
        return img.sum() * 0.0
    layer = model.text_encoder.encoder.layer[model.cfg.fusion_layer]
    mask_add = model.text_encoder.self_attention_mask(mask, model.cfg.fusion_window)
    attn = layer.crossattention.self
    q = attn._split(attn.query(layer.attention(txt, mask_add)))  # [B, h, L, d]
    k = attn._split(attn.key(img[:, 1:]))  # [B, h, N, d]
    qm = torch.stack([q[b, :, left:right].mean(dim=1) for b, left, right, _ in spans])  # [M, h, d]
    logits = torch.einsum("mhd,jhnd->mjhn", qm, k) / math.sqrt(q.shape[-1])
    scores = logits.logsumexp(dim=-1).mean(dim=-1)  # [M, J]
    pos = torch.tensor(
        [[float(cat in data.image_cats[int(j)]) for j in idx] for _, _, _, cat in spans]
    )
    return -(F.log_softmax(scores, dim=1) * pos / pos.sum(1, keepdim=True)).sum(1).mean()


def train_step(
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
    images = [data.images[i] for i in idx]
    if opts.augment:
        images = [flip_rotate(im, rng) for im in images]
    pixels = preprocess_images(images, model.cfg.image_size)
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
    pos_ids, pos_mask = (F.pad(t, (0, length - t.shape[1])) for t in (ids, mask))
    neg_ids, neg_mask = (F.pad(t, (0, length - t.shape[1])) for t in (neg_ids, neg_mask))
    # rows: (image, its caption), (hard-negative image, caption), (image, negative caption)
    ids_all = torch.cat([pos_ids, pos_ids, neg_ids])
    mask_all = torch.cat([pos_mask, pos_mask, neg_mask])
    img_all = torch.cat([img, img[neg_img], img])
    logits = model.itm_logits(img_all, ids_all, mask_all)
    labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long()
    loss_itm = F.cross_entropy(logits, labels)
    loss = loss_itc + loss_itm
    loss_ground = torch.zeros(())
    if opts.ground_weight > 0:
        loss_ground = grounding_loss(model, data, idx, caps, txt, mask, img)
        loss = loss + opts.ground_weight * loss_ground
    loss_mlm = torch.zeros(())
    if opts.mlm_weight > 0:
        loss_mlm = mlm_loss(model, data, ids, mask, img, opts)
        loss = loss + opts.mlm_weight * loss_mlm
    loss.backward()
    acc = (logits.argmax(1) == labels).float().mean().item()
    return {
        "loss_itc": loss_itc.item(),
        "loss_itm": loss_itm.item(),
        "itm_acc": acc,
        "loss_mlm": loss_mlm.item(),
        "loss_ground": loss_ground.item(),
    }
