# Copyright (c) det_ext authors.
"""Class text-embedding files, prompt averaging, caching and the CLIP text encoders (tiny random
open_clip and transformers models saved in their real formats)."""
import json
import os
import string

import pytest
import torch
import torch.nn.functional as F

from det_ext.modeling.open_vocab import (ClassEmbeddingError, ClassEmbeddings, TextEncoder,
                                        build_text_encoder, cached_class_embeddings,
                                        compute_class_embeddings, load_text_embeddings,
                                        save_text_embeddings)
from det_ext.modeling.open_vocab.build import resolve_class_names
from det_ext.utils.errors import DetExtInputError


class CharEncoder(TextEncoder):
    """Deterministic toy encoder: letter counts of the text (26-d)."""

    kind = "chars"
    dim = 26

    def __init__(self):
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        out = torch.zeros(len(texts), 26)
        for i, t in enumerate(texts):
            for ch in t:
                if ch in string.ascii_lowercase:
                    out[i, ord(ch) - 97] += 1
        return out


def test_save_load_roundtrip_and_checks(tmp_path):
    emb = ClassEmbeddings(["red ring", "blue bar"], torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]),
                          ["a {}"], {"kind": "x"})
    path = save_text_embeddings(str(tmp_path / "e.pt"), emb)
    back = load_text_embeddings(path, ["red ring", "blue bar"], 3)
    assert back.names == emb.names and torch.equal(back.embeddings, emb.embeddings)
    assert back.templates == ["a {}"] and back.encoder == {"kind": "x"}
    with pytest.raises(ClassEmbeddingError, match=r"has 2 classes but ds has 3 .*missing \['x'\]"):
        load_text_embeddings(path, ["red ring", "blue bar", "x"], target="ds")
    with pytest.raises(ClassEmbeddingError, match="order differs; first at index 0"):
        load_text_embeddings(path, ["blue bar", "red ring"])
    with pytest.raises(ClassEmbeddingError, match=r"names differ; first at index 1: 'blue bar'"):
        load_text_embeddings(path, ["red ring", "green bar"])
    with pytest.raises(ClassEmbeddingError, match="dimension 3 does not match the model's 512"):
        load_text_embeddings(path, expected_dim=512)
    with pytest.raises(ClassEmbeddingError, match="not found"):
        load_text_embeddings(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ClassEmbeddingError, match="junk.pt: not a readable"):
        load_text_embeddings(str(tmp_path / "junk.pt"))
    torch.save({"names": ["a"], "embeddings": torch.zeros(1, 2)}, tmp_path / "other.pt")
    with pytest.raises(ClassEmbeddingError, match="field 'format'"):
        load_text_embeddings(str(tmp_path / "other.pt"))
    with pytest.raises(ClassEmbeddingError, match=r"\[3, D\] matrix"):
        ClassEmbeddings(["a", "b", "c"], torch.zeros(2, 4))
    with pytest.raises(ClassEmbeddingError, match="duplicate"):
        ClassEmbeddings(["a", "a"], torch.zeros(2, 4))
    with pytest.raises(ClassEmbeddingError, match="NaN"):
        ClassEmbeddings(["a"], torch.tensor([[float("nan"), 0.0]]))


def test_template_averaging_hand_computed():
    enc = CharEncoder()
    emb = compute_class_embeddings(["ab", "c"], enc, ["{}", "x {}"])
    # "ab" -> (a+b)/sqrt2 and (a+b+x)/sqrt3, averaged, renormalised
    v1 = F.normalize(torch.tensor([1.0, 1, 0]), dim=0)
    v2 = F.normalize(torch.tensor([1.0, 1, 1]), dim=0)
    idx = [0, 1, 23]
    expected = F.normalize((v1 + v2) / 2, dim=0)
    torch.testing.assert_close(emb.embeddings[0, idx], expected)
    assert emb.embeddings[0].sum() == pytest.approx(float(expected.sum()), abs=1e-6)
    torch.testing.assert_close(emb.embeddings.norm(dim=1), torch.ones(2))
    assert emb.templates == ["{}", "x {}"] and emb.encoder == {"kind": "chars"}
    with pytest.raises(DetExtInputError, match="exactly once"):
        compute_class_embeddings(["a"], enc, ["no placeholder"])


def test_cache_reuses_file(tmp_path):
    enc = CharEncoder()
    a = cached_class_embeddings(["red", "blue"], enc, ["a {}"], str(tmp_path))
    calls = enc.calls
    b = cached_class_embeddings(["red", "blue"], enc, ["a {}"], str(tmp_path))
    assert enc.calls == calls and torch.equal(a.embeddings, b.embeddings)
    cached_class_embeddings(["blue", "red"], enc, ["a {}"], str(tmp_path))  # other key
    assert enc.calls > calls and len(os.listdir(tmp_path)) == 2


def _tiny_open_clip(tmp_path):
    import open_clip

    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                          "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                        "layers": 1}}
    cfg_file = tmp_path / "det_ext_tiny_clip.json"
    cfg_file.write_text(json.dumps(cfg))
    open_clip.add_model_config(str(cfg_file))
    torch.manual_seed(0)
    model = open_clip.create_model("det_ext_tiny_clip")
    weights = tmp_path / "tiny_clip.pt"
    torch.save(model.state_dict(), weights)
    return model.eval(), str(weights)


def test_open_clip_encoder_and_cli(tmp_path):
    import open_clip

    model, weights = _tiny_open_clip(tmp_path)
    enc = build_text_encoder("open_clip", weights, "det_ext_tiny_clip")
    assert enc.dim == 16
    tok = open_clip.get_tokenizer("det_ext_tiny_clip")
    with torch.no_grad():
        ref = model.encode_text(tok(["a photo of a red ring."]))
    torch.testing.assert_close(enc.encode(["a photo of a red ring."]), ref)
    # the CLI writes a validated file with the names inside
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "build_text_embeddings", os.path.join(os.path.dirname(__file__), "..", "tools",
                                              "build_text_embeddings.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = str(tmp_path / "emb.pt")
    tool.main(tool.parse_args(["--names", "red ring, blue bar", "--encoder", "open_clip",
                               "--model", "det_ext_tiny_clip", "--weights", weights,
                               "--template", "a {}", "--out", out]))
    emb = load_text_embeddings(out, ["red ring", "blue bar"], 16)
    with torch.no_grad():
        expected = F.normalize(model.encode_text(tok(["a red ring", "a blue bar"])), dim=1)
    torch.testing.assert_close(emb.embeddings, expected)
    assert emb.encoder["kind"] == "open_clip" and emb.templates == ["a {}"]
    with pytest.raises(DetExtInputError, match="not found"):
        build_text_encoder("open_clip", str(tmp_path / "none.pt"), "det_ext_tiny_clip")


def test_transformers_clip_encoder(tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    toks = ["<|startoftext|>", "<|endoftext|>"] + list(string.ascii_lowercase) + \
        [c + "</w>" for c in string.ascii_lowercase]
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(toks)}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    cfg = CLIPConfig(text_config=dict(vocab_size=len(toks), hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                                      pad_token_id=1),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=16),
                     projection_dim=8)
    torch.manual_seed(0)
    folder = tmp_path / "clip"
    CLIPModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    enc = build_text_encoder("hf_clip", str(folder))
    assert enc.dim == 8
    ref_model = CLIPModel.from_pretrained(folder).eval()
    batch = tok(["red ring"], return_tensors="pt")
    with torch.no_grad():
        ref = ref_model.get_text_features(**batch)
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    torch.testing.assert_close(enc.encode(["red ring"]), ref)
    emb = compute_class_embeddings(["red ring", "blue bar", "green star"], enc)
    assert emb.embeddings.shape == (3, 8)
    with pytest.raises(DetExtInputError, match="transformers CLIP folder not found"):
        build_text_encoder("hf_clip", str(tmp_path / "nope"))


def test_unknown_encoder_and_name_sources(tmp_path):
    with pytest.raises(DetExtInputError, match="unknown text encoder 'bert'"):
        build_text_encoder("bert")
    with pytest.raises(DetExtInputError, match="exactly one"):
        resolve_class_names(["a"], dataset="lt_shapes_val")
    f = tmp_path / "names.txt"
    f.write_text("red ring\n\nblue bar\n")
    assert resolve_class_names(names_file=str(f)) == ["red ring", "blue bar"]
