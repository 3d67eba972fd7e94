# Copyright (c) det_ext authors.
"""Caption-to-category matching and box selection."""

import json

import numpy as np
import pytest
import torch

from det_ext.pseudo.backends.base import pool_span_rows
from det_ext.pseudo.matching import CaptionMatcher, Vocabulary, pluralize, singularize
from det_ext.pseudo.selection import merge_maps, normalize_map, select_boxes
from det_ext.pseudo.text import SPECIAL_TOKENS, WordPieceTokenizer
from det_ext.utils.errors import DatasetFormatError

WORDS = [
    "a",
    "red",
    "circle",
    "circles",
    "dark",
    "hot",
    "dog",
    "dogs",
    "three",
    "and",
    "disc",
    "discs",
    "box",
    "boxes",
    "the",
    "scarlet",
    "two",
    "puppy",
]


@pytest.fixture
def matcher(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(
        json.dumps(
            {"red circle": ["red disc"], "dark red circle": [], "dog": [], "hot dog": [], "box": []}
        )
    )
    cats = [
        {"id": 7, "name": "red circle", "synonyms": ["scarlet circle"]},
        {"id": 3, "name": "dark red circle"},
        {"id": 1, "name": "dog", "synonyms": ["puppy"]},
        {"id": 2, "name": "hot dog"},
        {"id": 9, "name": "box"},
    ]
    vocab = Vocabulary.load(str(path), cats)
    tok = WordPieceTokenizer(list(SPECIAL_TOKENS) + WORDS)
    return tok, vocab


def test_plural_helpers():
    assert pluralize("red box") == "red boxes" and pluralize("berry") == "berries"
    assert singularize("red boxes") == "red box" and singularize("berries") == "berry"
    assert singularize("annulus") == "annulus" and singularize("cross") == "cross"


def test_vocabulary_forms_and_ids(matcher):
    _, vocab = matcher
    rc = vocab.by_id[7]
    assert rc.forms[:2] == ["red circle", "red disc"]
    assert {"scarlet circle", "red circles", "red discs", "scarlet circles"} <= set(rc.forms)
    assert "red circleses" not in rc.forms and "boxes" in vocab.by_id[9].forms
    assert [c.id for c in vocab.categories] == [7, 3, 1, 2, 9]


def test_vocabulary_errors(tmp_path):
    (tmp_path / "v.json").write_text(json.dumps({"zebra": []}))
    with pytest.raises(DatasetFormatError, match="'zebra' is not in the dataset"):
        Vocabulary.load(str(tmp_path / "v.json"), [{"id": 1, "name": "dog"}])
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(DatasetFormatError, match="expected"):
        Vocabulary.load(str(tmp_path / "bad.json"))


def test_all_occurrences_longest_counts_and_truncation(matcher):
    tok, vocab = matcher
    m = CaptionMatcher(vocab, tok.tokenize)
    caption = "three red circles and a dark red circle and a scarlet circle and the red discs"
    found = m.match(tok.tokenize(caption))
    got = [(x.category_id, x.form, x.left, x.right, x.count) for x in found]
    # [CLS] is position 0, so "red circles" (tokens 1-2) is span [2, 4)
    assert got == [
        (7, "red circles", 2, 4, 3),
        (3, "dark red circle", 6, 9, 1),
        (7, "scarlet circle", 11, 13, 1),
        (7, "red discs", 15, 17, 1),
    ]
    first_only = CaptionMatcher(vocab, tok.tokenize, all_occurrences=False, prefer_longest=False)
    got = {(x.category_id, x.left) for x in first_only.match(tok.tokenize(caption))}
    assert (7, 7) in got and (
        3,
        6,
    ) in got  # reference behaviour: "red circle" inside "dark red circle"
    assert [x.left for x in m.match(tok.tokenize(caption), max_tokens=11)] == [2, 6]


def test_shared_tokens_are_not_corrupted(matcher):
    """PB-OVD summed a multi-token name in place into its first token's row, so "dog" after "hot
    dog" saw a corrupted map. Here maps are new tensors and the cams are unchanged."""
    tok, vocab = matcher
    m = CaptionMatcher(vocab, tok.tokenize, prefer_longest=False)
    found = m.match(tok.tokenize("a hot dog"))
    assert [(x.category_id, x.left, x.right) for x in found] == [(2, 2, 4), (1, 3, 4)]
    cams = torch.arange(5 * 4, dtype=torch.float).reshape(1, 5, 2, 2)
    before = cams.clone()
    maps = pool_span_rows(cams, [[(x.left, x.right) for x in found]])
    torch.testing.assert_close(cams, before)
    torch.testing.assert_close(maps[0][0], cams[0, 2] + cams[0, 3])
    torch.testing.assert_close(maps[0][1], cams[0, 3])
    assert m.match(tok.tokenize("a hot dog")) == found  # matcher state untouched


def test_normalize_map_hand_computed():
    cam = np.array([[0.0, 1.0], [2.0, 4.0]])
    up = normalize_map(cam, 4, 2, threshold=0.5)
    assert up.shape == (4, 2)
    np.testing.assert_allclose(up, [[0, 0], [0, 0], [0.5, 1], [0.5, 1]])
    assert normalize_map(np.full((2, 2), 3.0), 8, 8) is None
    assert normalize_map(np.zeros((0, 0)), 8, 8) is None
    assert merge_maps([np.ones((2, 2))]) is None
    np.testing.assert_allclose(merge_maps([cam, 2 * cam, np.ones((2, 2))]), cam / 4)


def test_select_boxes_hand_computed():
    act = np.zeros((10, 10))
    act[2:4, 2:4] = 1.0  # mass 4
    act[6:10, 6:10] = 0.5  # mass 8
    props = np.array(
        [
            [2, 2, 4, 4, 0.9],  # 4 / 2 = 2.0
            [6, 6, 10, 10, 0.1],  # 8 / 4 = 2.0 + tie broken by order -> first
            [0, 0, 10, 10, 0.5],  # 12 / 10 = 1.2
            [6, 6, 12, 12, 0.5],
        ]
    )  # clipped to [6, 6, 10, 10]
    ((box, cov),) = select_boxes(act, props, alpha=0.5)
    np.testing.assert_allclose(box, [2, 2, 4, 4])
    assert cov == pytest.approx(4 / 12)
    ((box, cov),) = select_boxes(act, props, alpha=0.0)  # sum only: the whole image wins
    np.testing.assert_allclose(box, [0, 0, 10, 10]) and cov == pytest.approx(1.0)
    two = select_boxes(act, props, alpha=0.5, max_boxes=3)
    np.testing.assert_allclose([b for b, _ in two], [[2, 2, 4, 4], [6, 6, 10, 10]])
    # proposal scores break the tie between the two fitting boxes (0.9 vs 0.1)
    (box, _), = select_boxes(act, props[[1, 0]], alpha=0.5, score_weight=1.0)
    np.testing.assert_allclose(box, [2, 2, 4, 4])
    (box, _), = select_boxes(act, props[[1, 0]], alpha=0.5)  # ignored: first of the tie wins
    np.testing.assert_allclose(box, [6, 6, 10, 10])
    assert select_boxes(act, np.array([[0, 0, 1, 1, 1.0]]), 0.5) == []  # no activation inside
    assert select_boxes(act, np.zeros((0, 5)), 0.5) == []
    assert select_boxes(np.zeros((10, 10)), props, 0.5) == []


def test_quality_hand_computed():
    from det_ext.pseudo.quality import evaluate_pseudo_boxes

    gt = {
        "categories": [{"id": 1, "frequency": "f"}, {"id": 2, "frequency": "r"}],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10]},
            {"image_id": 1, "category_id": 2, "bbox": [50, 50, 10, 10]},
            {"image_id": 2, "category_id": 2, "bbox": [0, 0, 4, 4]},
        ],
    }
    pseudo = {
        "images": [{"id": 1}],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 5], "pseudo_score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [1, 0, 10, 10], "pseudo_score": 0.5},
            {"image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10], "pseudo_score": 0.5},
        ],
    }
    r = evaluate_pseudo_boxes(pseudo, gt)
    # box 1: IoU 0.5 with GT 1 -> TP; box 2: GT 1 taken, IoU 0 with GT 2 -> FP; box 3: wrong place
    assert r["num_true_positive"] == 1 and r["num_pseudo"] == 3 and r["num_gt"] == 3
    assert r["precision_iou50"] == pytest.approx(1 / 3) and r["recall_iou50"] == pytest.approx(
        1 / 3
    )
    assert r["mean_iou"] == pytest.approx(0.5)
    assert r["mean_best_iou"] == pytest.approx((0.5 + 90 / 110 + 0) / 3)
    assert r["by_group"]["r"]["precision_iou50"] == 0 and r["by_group"]["f"]["recall_iou50"] == 0.5


def test_draw_pseudo_box():
    from det_ext.pseudo.visualize import draw_pseudo_box

    img = np.zeros((8, 10, 3), np.uint8)
    act = np.zeros((8, 10))
    act[2:4, 2:5] = 1.0
    out = draw_pseudo_box(img, act, [[2, 2, 3, 2]], [[0, 0, 5, 5]], "red circle", scale=4)
    assert out.shape == (16 + 32, 40, 3)
    canvas = out[16:]
    assert tuple(canvas[8, 12]) == (40, 255, 40)  # green pseudo box corner at (2, 2) * 4
    assert tuple(canvas[0, 10]) == (255, 40, 40)  # red ground-truth edge on the top row
    assert canvas[30, 30].sum() > 0  # heatmap overlay (JET of 0 is dark blue, not black)
