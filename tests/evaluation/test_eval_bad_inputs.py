# Copyright (c) det_ext authors.
"""Bad input gives one clear error naming the offending entry."""
import copy
import json
import math

import pytest
from evalhelpers import random_problem

from det_ext.evaluation import EvaluationInputError, evaluate_coco, evaluate_lvis
from det_ext.utils.errors import DetExtInputError


@pytest.fixture(scope="module")
def problem():
    return random_problem(0, num_images=3, dets_per_image=5)


def _err(gt, dets, iou_type="bbox", fn=evaluate_lvis):
    with pytest.raises(EvaluationInputError) as info:
        fn(gt, dets, iou_type)
    return str(info.value)


def _bad(dets, index, **change):
    dets = copy.deepcopy(dets)
    for k, v in change.items():
        if v is KeyError:
            del dets[index][k]
        else:
            dets[index][k] = v
    return dets


def test_error_type_is_a_det_ext_input_error_and_value_error():
    assert issubclass(EvaluationInputError, DetExtInputError)
    assert issubclass(EvaluationInputError, ValueError)


@pytest.mark.parametrize("fn", [evaluate_lvis, evaluate_coco])
def test_unknown_image_and_category(problem, fn):
    gt, dets = problem
    msg = _err(gt, _bad(dets, 2, image_id=999999), fn=fn)
    assert "result #2" in msg and "image_id" in msg and "999999" in msg
    msg = _err(gt, _bad(dets, 1, category_id=4242), fn=fn)
    assert "result #1" in msg and "category_id=4242" in msg


@pytest.mark.parametrize("field", ["score", "image_id", "category_id"])
def test_missing_field(problem, field):
    gt, dets = problem
    msg = _err(gt, _bad(dets, 3, **{field: KeyError}))
    assert "result #3" in msg and f"no '{field}'" in msg


@pytest.mark.parametrize("value", [math.nan, math.inf, "0.5", None, True])
def test_bad_score(problem, value):
    gt, dets = problem
    msg = _err(gt, _bad(dets, 4, score=value))
    assert "result #4" in msg and "score" in msg


@pytest.mark.parametrize("box", [[1, 2, -3, 4], [1, 2, 3, -0.5], [math.nan, 0, 1, 1],
                                 [0, 0, math.inf, 1], [1, 2, 3], "box", None])
def test_bad_box(problem, box):
    gt, dets = problem
    msg = _err(gt, _bad(dets, 0, bbox=box))
    assert "result #0" in msg and "bbox" in msg


def test_bbox_evaluation_without_boxes_or_masks(problem):
    gt, dets = problem
    msg = _err(gt, _bad(dets, 1, bbox=KeyError))
    assert "result #1" in msg


def test_segm_evaluation_with_bad_segmentation():
    gt, dets = random_problem(1, num_images=3, dets_per_image=5, segm=True)
    dets = [{k: v for k, v in d.items() if k != "bbox"} for d in dets]
    dets[2]["segmentation"] = {"size": [10, 10]}
    msg = _err(gt, dets, "segm")
    assert "result #2" in msg and "counts" in msg


def test_results_not_a_list_and_not_objects(problem):
    gt, _ = problem
    assert "must be a list" in _err(gt, {"image_id": 1})
    assert "result #0 is not an object" in _err(gt, [3.0])


def test_malformed_and_missing_files(tmp_path, problem):
    gt, dets = problem
    bad = tmp_path / "dt.json"
    bad.write_text('[{"image_id": 1, "category_id": 2, "score": 0.3, "bbox": [1, 2')
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    msg = _err(str(gt_path), str(bad))
    assert str(bad) in msg and "malformed" in msg and "line 1" in msg
    assert "not found" in _err(str(tmp_path / "missing.json"), dets)
    (tmp_path / "gt_bad.json").write_text('{"images": [], "annotations": []}')
    assert "'categories'" in _err(str(tmp_path / "gt_bad.json"), dets)


def test_bad_ground_truth_entries(problem):
    gt, dets = problem
    g = copy.deepcopy(gt)
    g["annotations"][0]["bbox"] = [0, 0, math.nan, 2]
    assert f"annotations[id={g['annotations'][0]['id']}].bbox" in _err(g, dets)
    g = copy.deepcopy(gt)
    g["annotations"][1]["id"] = g["annotations"][0]["id"]
    assert "duplicate annotation id" in _err(g, dets)
    g = copy.deepcopy(gt)
    g["images"].append(dict(g["images"][0]))
    assert "duplicate image ids" in _err(g, dets)


def test_bad_iou_type(problem):
    gt, dets = problem
    assert "iou_type" in _err(gt, dets, "keypoints")
