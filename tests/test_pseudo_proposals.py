# Copyright (c) det_ext authors.
"""Proposal sources: a Detectron2 model (RPN / detector mode) and precomputed files."""

import json
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from det_ext.config import add_det_ext_config
from det_ext.pseudo.proposals import (
    NoProposals,
    PrecomputedProposals,
    build_proposal_source,
    dump_proposals,
)
from det_ext.utils.errors import ConfigInputError, DatasetFormatError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = os.path.join(REPO, "configs/LT-Shapes/mask_rcnn_R18_FPN_tiny.yaml")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    cfg = get_cfg()
    add_det_ext_config(cfg)
    cfg.merge_from_file(BASELINE)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("rpn") / "model.pth")
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return path


def _cfg(**kw):
    cfg = get_cfg()
    add_det_ext_config(cfg)
    cfg.merge_from_list([x for kv in kw.items() for x in kv])
    return cfg


@pytest.mark.parametrize("mode", ["rpn", "detector"])
def test_model_proposals(weights, mode):
    source = build_proposal_source(
        _cfg(
            **{
                "PSEUDO.PROPOSALS.CONFIG_FILE": BASELINE,
                "PSEUDO.PROPOSALS.WEIGHTS": weights,
                "PSEUDO.PROPOSALS.MODE": mode,
                "PSEUDO.PROPOSALS.TOPK": "7",
            }
        )
    )
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 255, (96, 80, 3), dtype=np.uint8),
        rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
    ]
    out = source([1, 2], images)
    assert len(out) == 2
    for p, img in zip(out, images):
        assert p.shape[1] == 5 and 0 < len(p) <= 7
        h, w = img.shape[:2]
        assert (p[:, 0] >= 0).all() and (p[:, 2] <= w + 1e-3).all() and (p[:, 3] <= h + 1e-3).all()
        assert (np.diff(p[:, 4]) <= 1e-6).all()  # sorted by score


def test_proposal_config_errors(weights, tmp_path):
    with pytest.raises(ConfigInputError, match="set FILE"):
        build_proposal_source(_cfg())
    with pytest.raises(ConfigInputError, match="not found"):
        build_proposal_source(
            _cfg(
                **{
                    "PSEUDO.PROPOSALS.CONFIG_FILE": BASELINE,
                    "PSEUDO.PROPOSALS.WEIGHTS": str(tmp_path / "none.pth"),
                }
            )
        )
    (tmp_path / "bad.json").write_text("[1")
    with pytest.raises(DatasetFormatError, match="malformed"):
        PrecomputedProposals(str(tmp_path / "bad.json"))


def test_precomputed_roundtrip(tmp_path):
    src = PrecomputedProposals.__new__(PrecomputedProposals)
    src.boxes = {"3": np.array([[1, 2, 3, 4, 0.5], [0, 0, 9, 9, 0.25]], np.float32)}
    path = str(tmp_path / "p.json")
    dump_proposals(src, [3, 4], lambda i: np.zeros((10, 10, 3), np.uint8), path)
    assert json.load(open(path)) == {"3": [[1, 2, 3, 4, 0.5], [0, 0, 9, 9, 0.25]], "4": []}
    again = PrecomputedProposals(path, topk=1)
    np.testing.assert_allclose(again([3], [None])[0], [[1, 2, 3, 4, 0.5]])
    assert again([5], [None])[0].shape == (0, 5)
    assert NoProposals()([1, 2], [None, None])[1].shape == (0, 5)
