# Copyright (c) det_ext authors.
"""ALBEF model, checkpoint formats, tokenizer and cross-attention Grad-CAM."""

import numpy as np
import pytest
import torch

from det_ext.pseudo.albef import AlbefConfig, AlbefITM, interpolate_pos_embed
from det_ext.pseudo.backends.albef import AlbefBackend
from det_ext.pseudo.backends.base import cross_attention_gradcam, pool_span_rows
from det_ext.pseudo.checkpoint import CheckpointError, load_albef_checkpoint
from det_ext.pseudo.testing import random_albef_checkpoint
from det_ext.pseudo.text import WordPieceTokenizer, clean_caption

VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "a",
    "red",
    "circle",
    "##s",
    "dark",
    "blue",
    "square",
    "hot",
    "dog",
    "and",
    "two",
    "un",
    "##believ",
    "##able",
]


def tiny_cfg(**kw):
    base = dict(
        image_size=32,
        patch_size=8,
        vision_width=32,
        vision_depth=2,
        vision_heads=2,
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_layers=4,
        num_heads=2,
        intermediate_size=64,
        fusion_layer=1,
        max_position=40,
        embed_dim=16,
    )
    base.update(kw)
    return AlbefConfig(**base)


def test_tokenizer_wordpiece_and_truncation():
    tok = WordPieceTokenizer(VOCAB)
    assert tok.tokenize("Two RED circles, unbelievable!") == [
        "two",
        "red",
        "circle",
        "##s",
        "[UNK]",
        "un",
        "##believ",
        "##able",
        "[UNK]",
    ]
    ids, mask = tok.encode(["a red circle and a dark blue square", "dog"], max_length=5)
    assert ids.shape == (2, 5)
    assert ids[0].tolist() == [2, 5, 6, 7, 3]  # explicitly truncated, [SEP] kept
    assert ids[1].tolist() == [2, 13, 3, 0, 0] and mask[1].tolist() == [1, 1, 1, 0, 0]
    assert clean_caption("A dog-house, (big)!  with/without") == "a dog house big with without"
    assert clean_caption(" ".join(["w"] * 40)).count("w") == 30


@pytest.mark.parametrize("pretrain_format", [True, False])
def test_checkpoint_formats_roundtrip(tmp_path, pretrain_format):
    cfg = tiny_cfg()
    path = str(tmp_path / "albef.pth")
    ref = random_albef_checkpoint(path, cfg, VOCAB, pretrain_format=pretrain_format)
    raw = torch.load(path, weights_only=False)
    state = raw["model"] if pretrain_format else raw
    assert ("model" in raw) == pretrain_format
    assert any(k.startswith("text_encoder.bert.encoder.layer.1.crossattention") for k in state)
    assert any(k.startswith("visual_encoder_m.") for k in state) and "image_queue" in state
    model, config = load_albef_checkpoint(path)
    assert model.cfg.fusion_layer == 1 and model.cfg.num_layers == 4 and model.cfg.vision_depth == 2
    assert model.cfg.num_heads == (2 if pretrain_format else 1)  # bare format: width / 64 default
    if pretrain_format:
        img = torch.randn(2, 3, 32, 32)
        ids = torch.tensor([[2, 5, 6, 7, 3], [2, 13, 3, 0, 0]])
        mask = (ids > 0).long()
        ref_model = AlbefITM(AlbefConfig(**{**cfg.to_dict(), "embed_dim": 0}))
        ref_model.load_state_dict(
            {
                k: v
                for k, v in ref.state_dict().items()
                if not k.startswith(("vision_proj", "text_proj", "temp"))
            }
        )
        torch.testing.assert_close(model(img, ids, mask), ref_model.eval()(img, ids, mask))
        assert config["tokenizer_vocab"] == VOCAB


def test_checkpoint_errors(tmp_path):
    path = str(tmp_path / "albef.pth")
    random_albef_checkpoint(path, tiny_cfg())
    obj = torch.load(path, weights_only=False)
    del obj["model"]["text_encoder.bert.encoder.layer.2.crossattention.self.key.weight"]
    torch.save(obj, tmp_path / "missing.pth")
    with pytest.raises(
        CheckpointError, match="missing keys.*layer.2.crossattention.self.key.weight"
    ):
        load_albef_checkpoint(str(tmp_path / "missing.pth"))
    obj = torch.load(path, weights_only=False)
    obj["model"]["itm_head.weight"] = torch.zeros(3, 32)
    torch.save(obj, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match="wrong shapes.*itm_head.weight"):
        load_albef_checkpoint(str(tmp_path / "shape.pth"))
    (tmp_path / "corrupt.pth").write_bytes(open(path, "rb").read()[:1000])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_albef_checkpoint(str(tmp_path / "corrupt.pth"))
    torch.save(
        {"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(1)}}, tmp_path / "d2.pth"
    )
    with pytest.raises(CheckpointError, match="not an ALBEF checkpoint"):
        load_albef_checkpoint(str(tmp_path / "d2.pth"))
    with pytest.raises(CheckpointError, match="not found"):
        load_albef_checkpoint(str(tmp_path / "nope.pth"))


def test_pos_embed_interpolation(tmp_path):
    path = str(tmp_path / "albef.pth")
    random_albef_checkpoint(path, tiny_cfg())
    model, _ = load_albef_checkpoint(path, image_size=48)
    assert model.visual_encoder.pos_embed.shape == (1, 37, 32)
    assert model(torch.randn(1, 3, 48, 48), torch.tensor([[2, 5, 3]]), torch.ones(1, 3)).shape == (
        1,
        2,
    )
    pe = torch.randn(1, 17, 4)
    torch.testing.assert_close(interpolate_pos_embed(pe, 16), pe)


def test_gradcam_batched_equals_per_image_and_manual(tmp_path):
    path = str(tmp_path / "albef.pth")
    random_albef_checkpoint(path, tiny_cfg(num_layers=5, fusion_layer=2), VOCAB)
    model, _ = load_albef_checkpoint(path)
    tok = WordPieceTokenizer(VOCAB)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    caps = ["a red circle and a dark blue square", "two hot dog", "a blue square"]
    batched = AlbefBackend(model, tok, cam_fusion_layer=1).token_cams(images, caps)
    per_image = AlbefBackend(model, tok, cam_fusion_layer=1, per_image=True).token_cams(
        images, caps
    )
    assert batched.shape == (3, 10, 4, 4)
    torch.testing.assert_close(batched, per_image, rtol=1e-5, atol=1e-9)
    assert batched[1:, 6:].abs().sum() == 0 and batched.sum() > 0  # padding rows masked
    # manual Grad-CAM of image 2 alone, from the definition
    from det_ext.pseudo.backends.base import preprocess_images

    attn = model.cross_attention(3)
    attn.save_attention = True
    ids, mask = tok.encode([caps[2]], 30)
    s = model(preprocess_images(images[2:], 32), ids, mask)[0, 1]
    g = torch.autograd.grad(s, attn.attention_probs)[0]
    a = attn.attention_probs.detach()
    attn.save_attention = False
    manual = (a[0, :, :, 1:] * g[0, :, :, 1:].clamp(min=0)).mean(0).reshape(-1, 4, 4)
    torch.testing.assert_close(batched[2, : ids.shape[1]], manual, rtol=1e-4, atol=1e-7)
    # the last fusion layer's word rows get no gradient from the [CLS] score
    last = AlbefBackend(model, tok, cam_fusion_layer=2).token_cams(images, caps)
    assert last[:, 1:].abs().max() == 0


def test_attention_mode(tmp_path):
    probs = torch.tensor([[[[0.2, 0.3, 0.5, 0.0, 0.0]], [[0.4, 0.1, 0.1, 0.2, 0.2]]]])
    cam = cross_attention_gradcam(probs, None, torch.ones(1, 1), (2, 2), mode="attention")
    torch.testing.assert_close(cam[0, 0], torch.tensor([[0.2, 0.3], [0.1, 0.1]]))
    with pytest.raises(ValueError, match="CAM mode"):
        cross_attention_gradcam(probs, None, torch.ones(1, 1), (2, 2), mode="rollout")


def test_cam_layer_must_be_a_fusion_layer(tmp_path):
    path = str(tmp_path / "albef.pth")
    random_albef_checkpoint(path, tiny_cfg(), VOCAB)
    model, _ = load_albef_checkpoint(path)
    with pytest.raises(ValueError, match="no cross-attention"):
        AlbefBackend(model, WordPieceTokenizer(VOCAB), cam_fusion_layer=3)


def test_gradcam_hand_computed():
    probs = torch.tensor([[[[0.2, 0.3, 0.5, 0.0, 0.0]]]], requires_grad=True)  # [1, 1 head, 1, 1+4]
    w = torch.tensor([1.0, 2.0, -1.0, 4.0, 0.5])
    cam = cross_attention_gradcam(probs, (probs[0, 0, 0] * w).sum()[None], torch.ones(1, 1), (2, 2))
    torch.testing.assert_close(cam[0, 0], torch.tensor([[0.6, 0.0], [0.0, 0.0]]))


def test_span_pooling_hand_computed():
    cams = torch.zeros(1, 4, 1, 3)  # [B, L, h, w]: [CLS], "red", "circle", [SEP]
    cams[0, 1, 0] = torch.tensor([1.0, 3.0, 5.0])  # normalised: 0, 0.5, 1
    cams[0, 2, 0] = torch.tensor([2.0, 2.0, 6.0])  # normalised: 0, 0, 1
    before = cams.clone()
    (s,), = pool_span_rows(cams, [[(1, 3)]])
    torch.testing.assert_close(s, torch.tensor([[3.0, 5.0, 11.0]]))
    (g, one), = pool_span_rows(cams, [[(1, 3), (2, 3)]], pool="geomean")
    torch.testing.assert_close(g, torch.tensor([[0.0, 0.0, 1.0]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(one, cams[0, 2])  # a one-token span is its row, unnormalised
    assert torch.equal(cams, before)  # rows are never modified in place
    with pytest.raises(ValueError, match="span pooling"):
        pool_span_rows(cams, [[(1, 3)]], pool="max")


def test_local_variant_mask_kernel_and_roundtrip(tmp_path):
    cfg = tiny_cfg(patch_kernel=16, vision_local_radius=1, fusion_image_cls=False)
    model = AlbefITM(cfg).eval()
    mask = model.visual_encoder.attention_mask(4, torch.device("cpu"))  # 4x4 grid
    assert mask.shape == (17, 17) and bool(mask[0].all()) and not bool(mask[1:, 0].any())
    # patch (0, 0) = token 1 sees (0,0), (0,1), (1,0), (1,1) only; patch (1, 1) = token 6 sees 9
    assert (mask[1, 1:].nonzero().flatten() + 1).tolist() == [1, 2, 5, 6]
    assert int(mask[6, 1:].sum()) == 9
    assert AlbefITM(tiny_cfg()).visual_encoder.attention_mask(4, torch.device("cpu")) is None
    assert model.visual_encoder.patch_embed.proj.weight.shape[-1] == 16
    # a patch token depends only on its neighbourhood: changing a far corner leaves it unchanged
    img = torch.randn(1, 3, 32, 32)
    far = img.clone()
    far[..., 30:, 30:] += 5.0  # only grid cell (3, 3) sees it; cell (0, 0) reaches cell (2, 2)
    with torch.no_grad():
        a, b = model.visual_encoder(img), model.visual_encoder(far)
    torch.testing.assert_close(a[0, 1], b[0, 1])
    assert not torch.allclose(a[0, 0], b[0, 0])  # [CLS] sees everything
    # without the image [CLS] in the fusion, its value cannot change the ITM score
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    with torch.no_grad():
        emb = model.visual_encoder(img)
        emb2 = emb.clone()
        emb2[:, 0] += 3.0
        torch.testing.assert_close(
            model.itm_logits(emb, ids, torch.ones_like(ids)),
            model.itm_logits(emb2, ids, torch.ones_like(ids)),
        )
    path = str(tmp_path / "local.pth")
    random_albef_checkpoint(path, cfg, VOCAB)
    loaded, _ = load_albef_checkpoint(path)
    assert loaded.cfg.patch_size == 8 and loaded.cfg.patch_kernel == 16
    assert loaded.cfg.vision_local_radius == 1 and loaded.cfg.fusion_image_cls is False
    assert loaded.cfg.map_size == 4


def test_text_windows():
    from det_ext.pseudo.albef import FusionBert

    pad = torch.zeros(1, 1, 1, 5)
    pad[..., 4] = -10000.0  # last token is padding
    m = FusionBert.windowed_mask(pad, 1)[0, 0]
    allowed = (m > -1).int()
    assert allowed.tolist() == [
        [1, 1, 1, 1, 0],  # [CLS]: every real token
        [0, 1, 1, 0, 0],  # a word: its neighbours, not [CLS]
        [0, 1, 1, 1, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 1, 0],
    ]
    assert FusionBert.windowed_mask(pad, -1) is pad
    # the same masks from the [B, L] token mask
    tokens = torch.tensor([[1, 1, 1, 1, 0]])
    assert torch.equal(FusionBert.self_attention_mask(tokens, 1)[0, 0], m)
    assert torch.equal(FusionBert.self_attention_mask(tokens, -1), pad)
    # a word's fusion-input state depends on its window only
    model = AlbefITM(tiny_cfg(text_window=0, fusion_window=1)).eval()
    ids = torch.tensor([[2, 5, 6, 7, 14, 10, 11, 3]])
    other = ids.clone()
    other[0, 6] = 9  # change a word far from position 2
    with torch.no_grad():
        a = model.text_encoder(ids, torch.ones_like(ids), mode="text")
        b = model.text_encoder(other, torch.ones_like(ids), mode="text")
    torch.testing.assert_close(a[0, 2], b[0, 2])
    assert not torch.allclose(a[0, 0], b[0, 0])
