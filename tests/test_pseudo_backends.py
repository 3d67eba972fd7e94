# Copyright (c) det_ext authors.
"""BLIP (transformers) and CLIP (open_clip) backends on tiny random models saved in real formats."""

import json

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

from det_ext.config import add_det_ext_config
from det_ext.pseudo.checkpoint import CheckpointError
from det_ext.pseudo.pipeline import build_backend
from det_ext.pseudo.text import SPECIAL_TOKENS

WORDS = ["a", "red", "circle", "blue", "square", "and", "dark"]


def _images(n, size):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _cfg(**kw):
    cfg = get_cfg()
    add_det_ext_config(cfg)
    cfg.merge_from_list([x for kv in kw.items() for x in kv])
    return cfg


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    from transformers import BlipConfig, BlipForImageTextRetrieval

    folder = tmp_path_factory.mktemp("blip")
    vocab = list(SPECIAL_TOKENS) + WORDS
    config = BlipConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "encoder_hidden_size": 32,
            "max_position_embeddings": 40,
            "pad_token_id": 0,
            "bos_token_id": 2,
            "sep_token_id": 3,
        },
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 32,
            "patch_size": 8,
        },
        image_text_hidden_size=16,
    )
    torch.manual_seed(0)
    BlipForImageTextRetrieval(config).save_pretrained(str(folder))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return str(folder)


def test_blip_backend_maps(blip_dir):
    cfg = _cfg(
        **{
            "PSEUDO.BACKEND": "BlipBackend",
            "PSEUDO.BLIP.MODEL_DIR": blip_dir,
            "PSEUDO.BLIP.CAM_LAYER": "1",
        }
    )
    backend = build_backend(cfg)
    caps = ["a red circle and a blue square", "a dark red circle"]
    spans = [[(2, 4), (6, 8)], [(2, 5)]]
    maps = backend.span_maps(_images(2, 48), caps, spans)
    assert [len(m) for m in maps] == [2, 1] and maps[0][0].shape == (4, 4)
    assert all(float(m.sum()) > 0 for ms in maps for m in ms)
    ref = build_backend(cfg, per_image=True).span_maps(_images(2, 48), caps, spans)
    for a, b in zip(maps, ref):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-10)
    cams = backend.token_cams(_images(1, 48), ["a red circle"])
    assert cams.shape == (1, 5, 4, 4)
    with pytest.raises(Exception, match="CAM_LAYER 7"):
        build_backend(
            _cfg(
                **{
                    "PSEUDO.BACKEND": "BlipBackend",
                    "PSEUDO.BLIP.MODEL_DIR": blip_dir,
                    "PSEUDO.BLIP.CAM_LAYER": "7",
                }
            )
        )


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    from open_clip.model import CLIP

    folder = tmp_path_factory.mktemp("clip")
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "patch_size": 8,
            "width": 32,
            "layers": 2,
            "head_width": 16,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 2,
        },
    }
    (folder / "tiny_clip.json").write_text(json.dumps(model_cfg))
    torch.manual_seed(0)
    torch.save(CLIP(**model_cfg).state_dict(), folder / "tiny_clip.pt")
    return str(folder / "tiny_clip.json"), str(folder / "tiny_clip.pt")


def test_clip_backend_maps(clip_files, tmp_path):
    cfg_file, ckpt = clip_files
    cfg = _cfg(
        **{
            "PSEUDO.BACKEND": "ClipBackend",
            "PSEUDO.CLIP.MODEL_NAME": cfg_file,
            "PSEUDO.CLIP.CHECKPOINT": ckpt,
        }
    )
    backend = build_backend(cfg)
    assert backend.tokenize("A red circle") == ["a", "red", "circle"]
    caps = ["a red circle and a blue square", "a dark red circle"]
    spans = [[(2, 4), (6, 8)], [(2, 5)]]
    maps = backend.span_maps(_images(2, 40), caps, spans)
    assert [len(m) for m in maps] == [2, 1] and maps[1][0].shape == (4, 4)
    ref = build_backend(cfg, per_image=True).span_maps(_images(2, 40), caps, spans)
    for a, b in zip(maps, ref):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-8)
    assert not torch.equal(maps[0][0], maps[0][1])  # the word changes the map
    torch.save({"visual.conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="not a loadable"):
        build_backend(
            _cfg(
                **{
                    "PSEUDO.BACKEND": "ClipBackend",
                    "PSEUDO.CLIP.MODEL_NAME": cfg_file,
                    "PSEUDO.CLIP.CHECKPOINT": str(tmp_path / "wrong.pt"),
                }
            )
        )
