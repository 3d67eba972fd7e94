# Copyright (c) det_ext authors.
"""End-to-end generation on the tiny LT-Shapes world: output format, resume, shards, bad input."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from det_ext.config import add_det_ext_config
from det_ext.data.datasets import ensure_lt_shapes_generated, register_lvis_format_dataset
from det_ext.pseudo.albef import AlbefConfig
from det_ext.pseudo.pipeline import generate_pseudo_boxes
from det_ext.pseudo.testing import random_albef_checkpoint
from det_ext.pseudo.tiny_vl import build_word_vocab
from det_ext.utils.errors import DetExtInputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory):
    """Tiny world files, a random tiny ALBEF checkpoint and GT-derived proposals."""
    name = tiny_world["val"]
    folder = ensure_lt_shapes_generated(name)
    meta = MetadataCatalog.get(name)
    tmp = tmp_path_factory.mktemp("pseudo")
    caps = json.load(open(meta.captions_file))
    vocab = build_word_vocab([c for e in caps for c in e["captions"]])
    cfg = AlbefConfig(
        image_size=64,
        patch_size=8,
        vision_width=32,
        vision_depth=1,
        vision_heads=2,
        vocab_size=len(vocab),
        hidden_size=32,
        num_layers=4,
        num_heads=2,
        intermediate_size=64,
        fusion_layer=1,
        max_position=48,
        embed_dim=0,
    )
    ckpt = str(tmp / "tiny.pth")
    random_albef_checkpoint(ckpt, cfg, vocab)
    gt = json.load(open(meta.json_file))
    rng = np.random.default_rng(0)
    props = {}
    for im in gt["images"]:
        rows = []
        for a in gt["annotations"]:
            if a["image_id"] == im["id"]:
                x, y, w, h = a["bbox"]
                for _ in range(3):
                    j = rng.normal(0, 2, 4)
                    rows.append([x + j[0], y + j[1], x + w + j[2], y + h + j[3], 1.0])
        props[str(im["id"])] = rows
    prop_file = str(tmp / "props.json")
    json.dump(props, open(prop_file, "w"))
    return {
        "folder": folder,
        "meta": meta,
        "ckpt": ckpt,
        "props": prop_file,
        "tmp": tmp,
        "captions": meta.captions_file,
        "vocab": meta.vocab_file,
        "json": meta.json_file,
    }


def make_cfg(world, **over):
    cfg = get_cfg()
    add_det_ext_config(cfg)
    cfg.PSEUDO.ALBEF.CHECKPOINT = world["ckpt"]
    cfg.PSEUDO.ALBEF.CAM_FUSION_LAYER = 1
    cfg.PSEUDO.ALBEF.MAX_TEXT_LEN = 40
    cfg.PSEUDO.PROPOSALS.FILE = world["props"]
    cfg.PSEUDO.BATCH_SIZE = 5
    cfg.merge_from_list([x for kv in over.items() for x in kv])
    return cfg


def run(world, out, captions=None, **kw):
    return generate_pseudo_boxes(
        make_cfg(world),
        captions or world["captions"],
        world["vocab"],
        out,
        image_root=world["folder"],
        dataset_json=world["json"],
        progress=False,
        **kw
    )


def test_output_is_registrable_lvis_json(world):
    out = str(world["tmp"] / "full.json")
    report = run(world, out)
    data = json.load(open(out))
    assert report["images"] == 16 and report["boxes"] == len(data["annotations"]) > 0
    assert data["info"]["image_root"] == world["folder"]
    cat_ids = {c["id"] for c in json.load(open(world["json"]))["categories"]}
    assert {c["id"] for c in data["categories"]} == cat_ids
    props = json.load(open(world["props"]))
    for a in data["annotations"]:
        assert (
            a["category_id"] in cat_ids and 0 < a["pseudo_score"] <= 1 and "segmentation" not in a
        )
        x, y, w, h = a["bbox"]
        assert any(
            np.allclose([x, y, x + w, y + h], np.clip(p[:4], 0, 64), atol=0.01)
            for p in props[str(a["image_id"])]
        )
    register_lvis_format_dataset("pseudo_test_out", out, data["info"]["image_root"])
    dicts = DatasetCatalog.get("pseudo_test_out")
    assert len(dicts) == 16 and sum(len(d["annotations"]) for d in dicts) == report["boxes"]
    assert os.path.isfile(dicts[0]["file_name"])
    # batched and per-image (reference loop) generation agree
    ref = str(world["tmp"] / "ref.json")
    generate_pseudo_boxes(
        make_cfg(world, **{"PSEUDO.PER_IMAGE_REFERENCE": "True"}),
        world["captions"],
        world["vocab"],
        ref,
        image_root=world["folder"],
        dataset_json=world["json"],
        progress=False,
    )
    assert json.load(open(ref))["annotations"] == data["annotations"]


def test_text_embeddings(world):
    out = str(world["tmp"] / "emb.json")
    generate_pseudo_boxes(
        make_cfg(world),
        world["captions"],
        world["vocab"],
        out,
        image_root=world["folder"],
        dataset_json=world["json"],
        progress=False,
        text_embeddings=True,
    )
    cats = json.load(open(out))["categories"]
    vecs = np.array([c["embedding"]["AlbefBackend"] for c in cats])
    assert vecs.shape == (8, 32)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    assert np.linalg.matrix_rank(vecs) > 1


def test_resume_and_shards_give_identical_json(world):
    full = str(world["tmp"] / "full2.json")
    run(world, full)
    expected = open(full).read()
    # interrupted after one batch, then a torn line as left by a kill during a write
    out = str(world["tmp"] / "resumed.json")
    assert run(world, out, max_batches=1) is None
    assert not os.path.exists(out)
    shard = out + ".shards/shard-0000-of-0001.jsonl"
    with open(shard, "a") as f:
        f.write('{"batch": 1, "results": [{"image_id": 12')
    run(world, out)
    assert open(out).read().replace(out, full) == expected.replace(full, full)
    lines = open(shard).read().splitlines()
    assert [json.loads(x).get("batch") for x in lines[1:]] == [0, 1, 2, 3]  # nothing duplicated
    run(world, out)  # rerunning a finished job changes nothing
    assert json.load(open(out)) == json.load(open(full))
    # two shards, run in any order; the last one merges
    sharded = str(world["tmp"] / "sharded.json")
    assert run(world, sharded, shard=(1, 2)) is None
    run(world, sharded, shard=(0, 2))
    assert json.load(open(sharded)) == json.load(open(full))
    # other settings on existing shard files are refused, not mixed
    with pytest.raises(DetExtInputError, match="other inputs or settings"):
        generate_pseudo_boxes(
            make_cfg(world, **{"PSEUDO.SELECTION.ALPHA": 1.0}),
            world["captions"],
            world["vocab"],
            out,
            image_root=world["folder"],
            dataset_json=world["json"],
            progress=False,
        )


def test_bad_input_is_counted_not_fatal(world):
    caps = json.load(open(world["captions"]))[:6]
    caps[0]["file_name"] = "images/val/missing.png"
    caps[1]["captions"] = ["", "   "]
    caps[2]["captions"] = ["zebras and giraffes", caps[2]["captions"][0]]
    path = str(world["tmp"] / "bad_caps.json")
    json.dump(caps, open(path, "w"))
    out = str(world["tmp"] / "bad.json")
    report = run(world, out, captions=path)
    assert report["images"] == 6 and report["images_written"] == 5
    assert report["skipped"]["missing_image"] == 1
    assert report["skipped"]["empty_caption"] == 2
    assert report["skipped"]["no_vocabulary_word"] == 1
    data = json.load(open(out))
    assert caps[0]["image_id"] not in {im["id"] for im in data["images"]}
    assert data["info"]["report"] == report
    json.dump([{"image_id": 1}], open(path, "w"))
    with pytest.raises(DetExtInputError, match="'image_id' \\(int\\) and 'file_name'"):
        run(world, str(world["tmp"] / "bad2.json"), captions=path)


def _cli(world, out, ckpt=None, extra=()):
    return [
        sys.executable,
        os.path.join(REPO, "tools", "generate_pseudo_boxes.py"),
        "--config",
        os.path.join(REPO, "configs/pseudo/Base-Pseudo-ALBEF.yaml"),
        "--captions",
        world["captions"],
        "--vocab",
        world["vocab"],
        "--out",
        out,
        "--dataset-json",
        world["json"],
        "--image-root",
        world["folder"],
        "--no-progress",
        "PSEUDO.ALBEF.CHECKPOINT",
        ckpt or world["ckpt"],
        "PSEUDO.ALBEF.IMAGE_SIZE",
        "64",
        "PSEUDO.ALBEF.CAM_FUSION_LAYER",
        "1",
        "PSEUDO.ALBEF.MAX_TEXT_LEN",
        "40",
        "PSEUDO.PROPOSALS.FILE",
        world["props"],
        "PSEUDO.BATCH_SIZE",
        "1",
        *extra,
    ]


def test_cli_bad_checkpoints_exit_2(world):
    bad = world["tmp"] / "corrupt.pth"
    bad.write_bytes(open(world["ckpt"], "rb").read()[:500])
    for ckpt, msg in ((bad, "cannot read checkpoint"),):
        p = subprocess.run(
            _cli(world, str(world["tmp"] / "x.json"), str(ckpt)),
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert p.returncode == 2, p.stderr[-2000:]
        assert p.stderr.strip().splitlines()[-1].startswith("error: ") and msg in p.stderr


@pytest.mark.slow
def test_cli_killed_and_resumed(world):
    """SIGKILL in the middle of a run, then the same command: same JSON as an uninterrupted run."""
    full = str(world["tmp"] / "cli_full.json")
    run_ref = subprocess.run(_cli(world, full), capture_output=True, text=True, cwd=REPO)
    assert run_ref.returncode == 0, run_ref.stderr[-2000:]
    out = str(world["tmp"] / "cli_killed.json")
    shard = out + ".shards/shard-0000-of-0001.jsonl"
    proc = subprocess.Popen(
        _cli(world, out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if os.path.isfile(shard) and open(shard).read().count("\n") >= 4:
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert not os.path.exists(out)
    p = subprocess.run(_cli(world, out), capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr[-2000:]
    assert open(out).read() == open(full).read()
