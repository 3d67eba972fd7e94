# Copyright (c) det_ext authors.
"""det_ext's COCO evaluation against pycocotools' COCOeval."""
import copy

import numpy as np
import pytest
from evalhelpers import random_problem, run_coco_api, segm_only

from det_ext.evaluation import COCOStyleEval, evaluate_coco


def _compare(gt, dets, iou_type, max_dets=(1, 10, 100)):
    ref_stats, ref_p, ref_r = run_coco_api(gt, dets, iou_type)
    ev = COCOStyleEval(gt, copy.deepcopy(dets), iou_type, max_dets=max_dets).run()
    np.testing.assert_allclose(ev.stats, ref_stats, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ev.precision, ref_p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ev.recall, ref_r, rtol=0, atol=1e-12)
    return ev


@pytest.mark.parametrize("seed", [0, 1])
def test_bbox_with_crowd_matches_cocoeval(seed):
    gt, dets = random_problem(seed, crowd=True, dets_per_image=50)
    ev = _compare(gt, dets, "bbox")
    assert ev.stats[0] > 0


def test_more_than_100_detections_per_image_and_category():
    gt, dets = random_problem(2, num_images=4, num_cats=2, crowd=True, dets_per_image=260)
    _compare(gt, dets, "bbox")


def test_segm_with_crowd_matches_cocoeval():
    gt, dets = random_problem(3, num_images=8, crowd=True, segm=True, dets_per_image=30)
    _compare(gt, segm_only(dets), "segm")


def test_annotation_id_zero_matches_cocoeval():
    gt, dets = random_problem(4, crowd=True)
    gt["annotations"][0]["id"] = 0
    _compare(gt, dets, "bbox")


def test_evaluate_coco_keys_equal_stats():
    gt, dets = random_problem(6, crowd=True)
    ref_stats, _, _ = run_coco_api(gt, dets, "bbox")
    out = evaluate_coco(gt, dets, "bbox")
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR@1", "AR@10", "AR@100", "ARs@100",
            "ARm@100", "ARl@100"]
    assert [out[k] for k in keys] == pytest.approx(list(ref_stats), abs=1e-12)
    assert out["stats"] == pytest.approx(list(ref_stats), abs=1e-12)
    assert len(out["per_category"]) == len(gt["categories"])


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10, 22))
def test_many_random_problems_match_cocoeval(seed):
    segm = seed % 4 == 0
    gt, dets = random_problem(seed, num_images=8 + seed % 5, crowd=True, segm=segm,
                              dets_per_image=20 + 8 * seed, score_decimals=1 + seed % 3)
    _compare(gt, segm_only(dets) if segm else dets, "segm" if segm else "bbox")
