# Copyright (c) det_ext authors.
"""Text-embedding box predictor, OpenVocabROIHeads, vocabulary swapping and a few CPU training
iterations on a tiny pseudo-box dataset."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_SPEC, tiny_model_opts
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from det_ext.data.lt_shapes.vocabulary import build_categories
from det_ext.data.open_vocab import (register_base_with_pseudo_novel, register_lt_shapes_ov,
                                     register_pseudo_box_dataset)
from det_ext.engine import build_config
from det_ext.engine.visualize import predict_image
from det_ext.modeling.open_vocab import (ClassEmbeddingError, ClassEmbeddings,
                                        OpenVocabOutputLayers, TextEmbeddingClassifier,
                                        get_vocabulary, save_text_embeddings, set_vocabulary)
from det_ext.utils.errors import DetExtInputError

DIM = 16
BASE_CFG = os.path.join(os.path.dirname(__file__), "..", "configs", "LT-Shapes",
                        "Base-LT-Shapes-Tiny.yaml")
TINY_NAMES = [c.name for c in build_categories(TINY_SPEC.num_categories, TINY_SPEC.num_twins)]
TINY_NOVEL = (TINY_NAMES[1], TINY_NAMES[5])


def _random_embeddings(names, seed=0, dim=DIM):
    g = torch.Generator().manual_seed(seed)
    vectors = F.normalize(torch.randn(len(names), dim, generator=g), dim=1)
    return ClassEmbeddings(list(names), vectors)


@pytest.fixture(scope="module")
def ov_world(tiny_world, tmp_path_factory):
    """The tiny world's OV split, embedding files (one random vector per name) and a pseudo-box
    JSON in the generator's output format."""
    folder = tmp_path_factory.mktemp("ov_model")
    names = register_lt_shapes_ov(TINY_SPEC, prefix="lt_shapes_tiny", novel=TINY_NOVEL)
    bank = _random_embeddings(TINY_NAMES)
    base_names = MetadataCatalog.get(names["base_train"]).thing_classes
    rows = [TINY_NAMES.index(n) for n in base_names]
    all_file = save_text_embeddings(str(folder / "all.pt"), bank)
    base_file = save_text_embeddings(str(folder / "base.pt"),
                                     ClassEmbeddings(base_names, bank.embeddings[rows]))
    # Pseudo boxes: ground-truth boxes shifted by 1 px with a score, every category (the format
    # of det_ext.pseudo's writer; only to exercise the training path).
    val_meta = MetadataCatalog.get(tiny_world["train"])
    DatasetCatalog.get(tiny_world["train"])
    train = json.load(open(val_meta.json_file))
    anns = [{"id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"],
             "bbox": [a["bbox"][0] + 1, a["bbox"][1] + 1, a["bbox"][2], a["bbox"][3]],
             "area": a["bbox"][2] * a["bbox"][3], "iscrowd": 0, "pseudo_score": 0.7}
            for a in train["annotations"]]
    pseudo = {"info": {"image_root": val_meta.image_root},
              "images": [{k: im[k] for k in ("id", "file_name", "height", "width")}
                         for im in train["images"]],
              "annotations": anns,
              "categories": [{"id": c["id"], "name": c["name"]} for c in train["categories"]]}
    pseudo_file = folder / "pseudo.json"
    pseudo_file.write_text(json.dumps(pseudo))
    register_pseudo_box_dataset("lt_shapes_tiny_ov_pseudo", str(pseudo_file))
    return {**names, "all": all_file, "base": base_file, "bank": bank, "folder": folder,
            "pseudo": "lt_shapes_tiny_ov_pseudo"}


def _ov_opts(ov_world, out, train="base", max_iter=2, extra=()):
    opts = tiny_model_opts(str(out), max_iter)
    i = opts.index("MODEL.ROI_HEADS.NUM_CLASSES")
    train_ds = ov_world["base_train"] if train == "base" else ov_world["pseudo"]
    n = 6 if train == "base" else 8
    opts[i + 1] = str(n)
    opts[opts.index("DATASETS.TRAIN") + 1] = f"('{train_ds}',)"
    opts[opts.index("DATASETS.TEST") + 1] = f"('{ov_world['val']}',)"
    return opts + ["MODEL.MASK_ON", "False", "MODEL.ROI_HEADS.NAME", "OpenVocabROIHeads",
                   "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True",
                   "OPEN_VOCAB.TRAIN_EMBEDDINGS", ov_world["base" if train == "base" else "all"],
                   "OPEN_VOCAB.TEST_EMBEDDINGS", ov_world["all"],
                   "DET_EXT.TRAINER", "OpenVocabTrainer", *extra]


def test_classifier_zero_background_is_dot_product():
    torch.manual_seed(0)
    emb = torch.randn(3, 4)
    clf = TextEmbeddingClassifier(5, emb, normalize=False, background="zero")
    x = torch.randn(7, 5)
    logits = clf(x)
    assert logits.shape == (7, 4)
    z = x @ clf.proj.weight.t() + clf.proj.bias
    torch.testing.assert_close(logits[:, :3], z @ emb.t())
    assert torch.all(logits[:, 3] == 0)  # background last, logit exactly 0
    assert "class_embeddings" not in clf.state_dict()  # vocabulary-free checkpoints
    assert not any(p is clf.class_embeddings for p in clf.parameters())


def test_classifier_normalized_learned_background():
    torch.manual_seed(1)
    emb = torch.randn(2, 4)
    clf = TextEmbeddingClassifier(3, emb, normalize=True, temperature=0.1, background="learned")
    x = torch.randn(5, 3)
    z = F.normalize(clf.proj(x), dim=1)
    expected = torch.cat([z @ F.normalize(emb, dim=1).t(),
                          (z @ F.normalize(clf.bg_embedding, dim=0))[:, None]], dim=1) / 0.1
    torch.testing.assert_close(clf(x), expected)
    assert clf(x).abs().max() <= 1 / 0.1 + 1e-5
    assert clf.bg_embedding.requires_grad


def _predictor(bg_weight, agnostic=True, num=3, dim=4):
    torch.manual_seed(2)
    return OpenVocabOutputLayers(ShapeSpec(channels=6), class_embeddings=torch.randn(num, dim),
                                 box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
                                 cls_agnostic_bbox_reg=agnostic, bg_loss_weight=bg_weight)


def test_background_loss_weight_hand_computed():
    pred = _predictor(0.2)
    x = torch.randn(4, 6)
    scores, deltas = pred(x)
    assert scores.shape == (4, 4) and deltas.shape == (4, 4)
    gt = torch.tensor([0, 3, 3, 2])  # 3 = background (last index)
    boxes = Boxes(torch.tensor([[0, 0, 10, 10.]] * 4))
    inst = Instances((20, 20), proposal_boxes=boxes, gt_boxes=boxes, gt_classes=gt)
    with EventStorage():
        loss = pred.losses((scores, deltas), [inst])["loss_cls"]
    logp = torch.log_softmax(scores, dim=1)
    w = [1.0, 0.2, 0.2, 1.0]
    expected = -sum(w[i] * logp[i, gt[i]] for i in range(4)) / 4
    torch.testing.assert_close(loss, expected)
    # weight 1 everywhere equals Detectron2's plain mean cross-entropy
    pred1 = _predictor(1.0)
    s1, d1 = pred1(x)
    with EventStorage():
        torch.testing.assert_close(pred1.losses((s1, d1), [inst])["loss_cls"],
                                   F.cross_entropy(s1, gt))


def test_class_specific_regression_blocks_vocabulary_change():
    pred = _predictor(0.2, agnostic=False)
    assert pred.bbox_pred.out_features == 12
    with pytest.raises(ClassEmbeddingError, match="CLS_AGNOSTIC_BBOX_REG"):
        pred.set_class_embeddings(torch.randn(5, 4))
    pred.set_class_embeddings(torch.randn(3, 4))  # same classes count: allowed
    with pytest.raises(ClassEmbeddingError, match="dimension"):
        _predictor(0.2).set_class_embeddings(torch.randn(5, 7))


def test_embedding_file_mismatch_is_a_clear_error(ov_world, tmp_path):
    # base-train dataset (6 classes) with the 8-class file
    opts = _ov_opts(ov_world, tmp_path, extra=("OPEN_VOCAB.TRAIN_EMBEDDINGS", ov_world["all"]))
    cfg = build_config(BASE_CFG, opts)
    with pytest.raises(DetExtInputError, match=r"all\.pt: has 8 classes but training dataset"):
        build_model(cfg)
    # NUM_CLASSES that does not match the file
    opts = _ov_opts(ov_world, tmp_path, extra=("MODEL.ROI_HEADS.NUM_CLASSES", "5"))
    with pytest.raises(DetExtInputError, match="NUM_CLASSES is 5"):
        build_model(build_config(BASE_CFG, opts))
    # dimension check
    opts = _ov_opts(ov_world, tmp_path, extra=("OPEN_VOCAB.EMBED_DIM", "32"))
    with pytest.raises(DetExtInputError, match="dimension 16 does not match the model's 32"):
        build_model(build_config(BASE_CFG, opts))
    # permuted names
    reversed_names = MetadataCatalog.get(ov_world["base_train"]).thing_classes[::-1]
    base = ClassEmbeddings(names=reversed_names, embeddings=torch.randn(6, DIM))
    bad = save_text_embeddings(str(tmp_path / "perm.pt"), base)
    opts = _ov_opts(ov_world, tmp_path, extra=("OPEN_VOCAB.TRAIN_EMBEDDINGS", bad))
    with pytest.raises(DetExtInputError, match="order differs"):
        build_model(build_config(BASE_CFG, opts))


def _detections(cfg, model, image):
    inst = predict_image(cfg, model, image)
    names = get_vocabulary(model)
    boxes = inst.pred_boxes.tensor.tolist()
    return sorted((names[int(c)], round(float(s), 4), tuple(round(v, 2) for v in b))
                  for c, s, b in zip(inst.pred_classes, inst.scores, boxes))


def test_set_vocabulary_swaps_class_space_consistently(ov_world, tmp_path):
    cfg = build_config(BASE_CFG, _ov_opts(ov_world, tmp_path, extra=(
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    d = DatasetCatalog.get(ov_world["val"])[0]
    image = read_image(d["file_name"], format="BGR")
    bank = ov_world["bank"]
    meta = set_vocabulary(model, bank.names, embeddings=bank)
    assert meta.thing_classes == bank.names
    full = _detections(cfg, model, image)
    assert full and {n for n, _, _ in full} <= set(bank.names)
    # the same vocabulary in another order: the same detections under the same names
    perm = [5, 2, 7, 0, 1, 6, 3, 4]
    names_p = [bank.names[i] for i in perm]
    set_vocabulary(model, names_p, embeddings=bank.embeddings[perm])
    assert _detections(cfg, model, image) == full
    # a 3-class vocabulary: classifier, class counts and metadata change together
    sub = [bank.names[i] for i in (4, 0, 6)]
    meta = set_vocabulary(model, sub, embeddings=bank.embeddings[[4, 0, 6]])
    heads = model.roi_heads
    assert heads.num_classes == heads.box_predictor.num_classes == 3
    assert heads.box_predictor.cls_score.class_embeddings.shape == (3, DIM)
    assert meta.thing_classes == sub and MetadataCatalog.get(model.open_vocab_metadata_name) is meta
    inst = predict_image(cfg, model, image)
    assert len(inst) and int(inst.pred_classes.max()) < 3
    scores, _ = heads.box_predictor(torch.randn(2, heads.box_predictor.cls_score.proj.in_features))
    assert scores.shape == (2, 4)


def test_set_vocabulary_failure_leaves_model_unchanged(ov_world, tmp_path):
    cfg = build_config(BASE_CFG, _ov_opts(ov_world, tmp_path))
    model = build_model(cfg).eval()
    before = get_vocabulary(model)
    matrix = model.roi_heads.box_predictor.cls_score.class_embeddings.clone()
    with pytest.raises(ClassEmbeddingError, match="dimension 7"):
        set_vocabulary(model, ["a", "b"], embeddings=torch.randn(2, 7))
    with pytest.raises(ClassEmbeddingError, match="do not fit 3 class names"):
        set_vocabulary(model, ["a", "b", "c"], embeddings=torch.randn(2, DIM))
    with pytest.raises(ClassEmbeddingError, match="has 8 classes but the vocabulary has 2"):
        set_vocabulary(model, ["a", "b"], embeddings=ov_world["all"])
    assert get_vocabulary(model) == before and model.roi_heads.num_classes == 6
    assert torch.equal(model.roi_heads.box_predictor.cls_score.class_embeddings, matrix)


def test_train_on_pseudo_boxes_then_generalized_eval(ov_world, tmp_path):
    from det_ext.engine import build_trainer_class

    os.makedirs(tmp_path / "pseudo")
    os.makedirs(tmp_path / "ft")
    fast = ("MODEL.RPN.POST_NMS_TOPK_TEST", "50", "TEST.DETECTIONS_PER_IMAGE", "20",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.05")
    cfg = build_config(BASE_CFG, _ov_opts(ov_world, tmp_path / "pseudo", train="pseudo", max_iter=3,
                                          extra=("DATASETS.TEST", "()")))
    trainer_cls = build_trainer_class(cfg)
    assert trainer_cls.__name__ == "OpenVocabTrainer"
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    log = [json.loads(line) for line in open(tmp_path / "pseudo" / "training_metrics.json")]
    assert len(log) >= 1 and all(math.isfinite(r["loss_cls"]) for r in log if "loss_cls" in r)
    assert trainer.model.roi_heads.num_classes == 8
    # fine-tune on base ground truth from the pseudo-box model, projection frozen
    weights = str(tmp_path / "pseudo" / "model_final.pth")
    assert os.path.isfile(weights)
    cfg2 = build_config(BASE_CFG, _ov_opts(ov_world, tmp_path / "ft", max_iter=2, extra=(
        "MODEL.WEIGHTS", weights, "OPEN_VOCAB.FREEZE_PROJECTION", "True", *fast)))
    trainer2 = trainer_cls(cfg2)
    trainer2.resume_or_load(resume=False)
    proj0 = trainer2.model.roi_heads.box_predictor.cls_score.proj.weight.clone()
    torch.testing.assert_close(proj0, torch.load(weights, weights_only=False)["model"][
        "roi_heads.box_predictor.cls_score.proj.weight"])
    trainer2.train()
    results = trainer2._last_eval_results
    assert torch.equal(trainer2.model.roi_heads.box_predictor.cls_score.proj.weight, proj0)
    bbox = results["bbox"]
    for k in ("novel_AP50", "base_AP50", "all_AP50", "AP50"):
        assert k in bbox
    base_names = MetadataCatalog.get(ov_world["base_train"]).thing_classes
    assert get_vocabulary(trainer2.model) == base_names
    metrics = json.load(open(tmp_path / "ft" / "metrics.json"))
    assert "novel_AP50" in metrics["bbox"]
    assert np.isfinite(bbox["all_AP50"])


def _tiny_vl_checkpoint(path, embed_dim):
    from det_ext.pseudo.albef import AlbefConfig
    from det_ext.pseudo.testing import random_albef_checkpoint

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "picture", "of", "an", "image",
             "showing"] + sorted({w for n in TINY_NAMES for w in n.split()})
    cfg = AlbefConfig(image_size=32, patch_size=16, vision_width=16, vision_depth=1,
                      vision_heads=2, vocab_size=len(words), hidden_size=16, num_layers=2,
                      num_heads=2, intermediate_size=32, fusion_layer=1, max_position=16,
                      embed_dim=embed_dim)
    return random_albef_checkpoint(str(path), cfg, vocab=words)


def test_tiny_vl_text_encoder(tmp_path):
    from det_ext.modeling.open_vocab import build_text_encoder
    from det_ext.pseudo import WordPieceTokenizer

    model = _tiny_vl_checkpoint(tmp_path / "vl.pth", 8)
    words = torch.load(tmp_path / "vl.pth", weights_only=False)["config"]["tokenizer_vocab"]
    ids, mask = WordPieceTokenizer(words).encode(["a red circle", "a blue square"], 16)
    with torch.no_grad():
        h = model.text_encoder(ids, mask, mode="text")
    enc = build_text_encoder("tiny_vl", str(tmp_path / "vl.pth"), pooling="proj")
    assert enc.dim == 8
    torch.testing.assert_close(enc.encode(["A red circle.", "a blue square"]),
                               model.text_proj(h[:, 0]))
    enc = build_text_encoder("tiny_vl", str(tmp_path / "vl.pth"))  # mean of the word states
    assert enc.dim == 16 and enc.describe()["pooling"] == "mean"
    torch.testing.assert_close(enc.encode(["a red circle"]), h[:1, 1:4].mean(1))
    with pytest.raises(DetExtInputError, match="POOLING"):
        build_text_encoder("tiny_vl", str(tmp_path / "vl.pth"), pooling="max")


def test_predict_cli_with_custom_vocabulary(ov_world, tmp_path):
    import importlib.util
    import subprocess
    import sys

    from detectron2.checkpoint import DetectionCheckpointer

    _tiny_vl_checkpoint(tmp_path / "vl.pth", DIM)
    cfg = build_config(BASE_CFG, _ov_opts(ov_world, tmp_path, extra=(
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")))
    torch.manual_seed(0)
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(cfg.dump())
    image = DatasetCatalog.get(ov_world["val"])[0]["file_name"]
    spec = importlib.util.spec_from_file_location(
        "predict_tool", os.path.join(os.path.dirname(__file__), "..", "tools", "predict.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    vocab = f"{TINY_NAMES[3]}, {TINY_NAMES[0]}"
    args = tool.parse_args([
        "--config-file", str(cfg_file), "--input", image, "--output", str(tmp_path / "out.png"),
        "--vocabulary", vocab, "--score-thresh", "0", "--json", str(tmp_path / "out.json"),
        "MODEL.WEIGHTS", str(tmp_path / "model.pth"), "OPEN_VOCAB.TEXT_ENCODER.NAME", "tiny_vl",
        "OPEN_VOCAB.TEXT_ENCODER.WEIGHTS", str(tmp_path / "vl.pth"),
        "OPEN_VOCAB.TEXT_ENCODER.CACHE_DIR", str(tmp_path / "cache")])
    tool.main(args)
    out = json.load(open(tmp_path / "out.json"))
    assert out["vocabulary"] == [TINY_NAMES[3], TINY_NAMES[0]]
    assert out["detections"] and {d["class_name"] for d in out["detections"]} <= set(
        out["vocabulary"])
    assert all(d["class_id"] in (0, 1) for d in out["detections"])
    assert (tmp_path / "out.png").stat().st_size > 0 and os.listdir(tmp_path / "cache")
    # a text encoder of another size is one clear error line, exit status 2
    _tiny_vl_checkpoint(tmp_path / "vl8.pth", 8)
    repo = os.path.join(os.path.dirname(__file__), "..")
    res = subprocess.run(
        [sys.executable, os.path.join(repo, "tools", "predict.py"), "--config-file",
         str(cfg_file), "--input", image, "--output", str(tmp_path / "o2.png"), "--vocabulary",
         vocab, "MODEL.WEIGHTS", str(tmp_path / "model.pth"), "OPEN_VOCAB.TEXT_ENCODER.WEIGHTS",
         str(tmp_path / "vl8.pth"), "OPEN_VOCAB.TEXT_ENCODER.POOLING", "proj"],
        capture_output=True, text=True, cwd=repo)
    assert res.returncode == 2
    assert "text encoder output size 8 does not match the model's embedding dimension 16" in \
        res.stderr.strip().splitlines()[-1]


def test_mask_rcnn_with_text_embedding_classifier(ov_world, tmp_path):
    cfg = build_config(BASE_CFG, _ov_opts(ov_world, tmp_path, extra=(
        "MODEL.MASK_ON", "True", "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "True",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")))
    torch.manual_seed(0)
    model = build_model(cfg)
    d = DatasetCatalog.get(ov_world["base_train"])[0]
    image = torch.as_tensor(read_image(d["file_name"], format="BGR").transpose(2, 0, 1).copy())
    from detectron2.structures import BoxMode

    boxes = [BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
             for a in d["annotations"]]
    inst = Instances((64, 64), gt_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
                     gt_classes=torch.tensor([a["category_id"] for a in d["annotations"]]))
    import pycocotools.mask as mask_utils
    from detectron2.structures import BitMasks

    masks = [mask_utils.decode(a["segmentation"]) for a in d["annotations"]]
    inst.gt_masks = BitMasks(torch.as_tensor(np.stack(masks)).bool())
    model.train()
    with EventStorage():
        losses = model([{"image": image, "instances": inst, "height": 64, "width": 64}])
    assert {"loss_cls", "loss_box_reg", "loss_mask"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    bank = ov_world["bank"]
    set_vocabulary(model, bank.names, embeddings=bank)
    out = model([{"image": image, "height": 64, "width": 64}])[0]["instances"]
    assert out.has("pred_masks") and int(out.pred_classes.max()) < 8
    # class-specific masks are tied to the training classes
    cfg2 = build_config(BASE_CFG, _ov_opts(ov_world, tmp_path, extra=("MODEL.MASK_ON", "True")))
    with pytest.raises(ClassEmbeddingError, match="CLS_AGNOSTIC_MASK"):
        set_vocabulary(build_model(cfg2), bank.names, embeddings=bank)


def test_base_with_pseudo_novel_dataset(ov_world, tiny_world):
    val_meta = MetadataCatalog.get(ov_world["val"])
    novel_ids = list(val_meta.novel_category_ids)
    name = register_base_with_pseudo_novel("lt_shapes_tiny_ov_base_pseudo_novel",
                                           tiny_world["train"], ov_world["pseudo"], novel_ids)
    merged = DatasetCatalog.get(name)
    world = {d["image_id"]: d for d in DatasetCatalog.get(tiny_world["train"])}
    id_map = MetadataCatalog.get(tiny_world["train"]).thing_dataset_id_to_contiguous_id
    novel = {id_map[i] for i in novel_ids}
    assert len(merged) == len(world) and MetadataCatalog.get(name).thing_classes == list(
        MetadataCatalog.get(tiny_world["train"]).thing_classes)
    n_novel = 0
    for d in merged:
        gt = world[d["image_id"]]["annotations"]
        base_gt = [a for a in gt if a["category_id"] not in novel]
        got_base = [a for a in d["annotations"] if a["category_id"] not in novel]
        got_novel = [a for a in d["annotations"] if a["category_id"] in novel]
        assert [a["bbox"] for a in got_base] == [a["bbox"] for a in base_gt]  # base: ground truth
        # novel: the pseudo boxes (ground truth shifted by 1 px in the fixture), never the GT
        want = sorted((a["category_id"], round(a["bbox"][0] + 1, 3)) for a in gt
                      if a["category_id"] in novel)
        assert sorted((a["category_id"], round(a["bbox"][0], 3)) for a in got_novel) == want
        n_novel += len(got_novel)
    assert n_novel > 0
