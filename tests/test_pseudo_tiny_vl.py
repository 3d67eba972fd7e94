# Copyright (c) det_ext authors.
"""Tiny VL training: a few iterations on the tiny world, ALBEF-format output, resume, negatives."""

import os

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog

from det_ext.data.datasets import ensure_lt_shapes_generated
from det_ext.pseudo.checkpoint import load_albef_checkpoint
from det_ext.utils.errors import DatasetFormatError
from det_ext.pseudo.tiny_vl import CaptionData, TinyVLOptions, train_tiny_vl
from det_ext.pseudo.tiny_vl_data import flip_rotate


def test_train_resume_and_checkpoint(tiny_world, tmp_path):
    name = tiny_world["train"]
    folder = ensure_lt_shapes_generated(name)
    meta = MetadataCatalog.get(name)
    opts = TinyVLOptions(
        max_iter=2,
        batch_size=4,
        warmup=1,
        checkpoint_period=1,
        max_text_len=24,
        ground_weight=1.0,
        text_window=0,
        fusion_window=1,
    )
    out = str(tmp_path / "vl")
    ckpt = train_tiny_vl(meta.captions_file, folder, meta.vocab_file, out, opts, meta.json_file)
    raw = torch.load(ckpt, weights_only=False)
    assert set(raw) >= {"model", "config", "optimizer", "epoch"}
    assert any(
        k.startswith("text_encoder.bert.encoder.layer.2.crossattention") for k in raw["model"]
    )
    model, config = load_albef_checkpoint(ckpt)
    assert model.cfg.fusion_layer == 2 and model.cfg.num_layers == 5 and model.cfg.map_size == 8
    assert (model.cfg.text_window, model.cfg.fusion_window) == (0, 1)
    assert model.cfg.patch_kernel == opts.patch_kernel and not model.cfg.fusion_image_cls
    assert config["tokenizer_vocab"][:4] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    assert open(os.path.join(out, "vocab.txt")).read().split("\n")[:2] == ["[PAD]", "[UNK]"]
    # resume: two more iterations continue from the saved state
    state = torch.load(os.path.join(out, "last_state.pth"), weights_only=False)
    assert state["iter"] == 2
    opts.max_iter = 4
    train_tiny_vl(meta.captions_file, folder, meta.vocab_file, out, opts, meta.json_file)
    assert torch.load(os.path.join(out, "last_state.pth"), weights_only=False)["iter"] == 4


def test_swapped_negatives_name_absent_categories(tiny_world):
    name = tiny_world["train"]
    folder = ensure_lt_shapes_generated(name)
    meta = MetadataCatalog.get(name)
    data = CaptionData(meta.captions_file, folder, meta.vocab_file, meta.json_file)
    rng = np.random.default_rng(0)
    checked = 0
    for i in range(len(data)):
        for c in range(len(data.captions[i])):
            neg = data.swapped(i, c, rng)
            if neg is None:
                continue
            cats = {m.category_id for m in data.matcher.match(data.tokenizer.tokenize(neg))}
            assert not cats <= data.image_cats[i]  # the swapped caption is false for the image
            assert not data.caption_true_for(cats, neg, i)
            checked += 1
    assert checked > 20


def test_corpus_of_several_sources_and_augmentation(tiny_world, tmp_path):
    name = tiny_world["train"]
    folder = ensure_lt_shapes_generated(name)
    meta = MetadataCatalog.get(name)
    one = CaptionData(meta.captions_file, folder, meta.vocab_file, meta.json_file)
    two = CaptionData([meta.captions_file] * 2, [folder] * 2, meta.vocab_file, meta.json_file)
    assert len(two) == 2 * len(one)
    assert two.captions[len(one)] == one.captions[0]
    assert np.array_equal(two.images[len(one)], one.images[0])
    with pytest.raises(ValueError, match="2 captions files but 1 image roots"):
        CaptionData([meta.captions_file] * 2, [folder], meta.vocab_file)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"image_id": 1, "file_name": "a.png", "captions": ["a red')
    with pytest.raises(DatasetFormatError, match="broken.json: malformed or truncated JSON"):
        CaptionData([meta.captions_file, str(broken)], [folder] * 2, meta.vocab_file)
    # the 8 flips/rotations, each a permutation of the pixels, all reached
    img = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        out = flip_rotate(img, rng)
        assert out.shape == img.shape and out.flags["C_CONTIGUOUS"]
        assert sorted(out.ravel().tolist()) == sorted(img.ravel().tolist())
        seen.add(out.tobytes())
    assert len(seen) == 8
