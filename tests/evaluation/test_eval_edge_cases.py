# Copyright (c) det_ext authors.
"""Hand-built edge cases: hand-computed values, and equality with the LVIS API."""
import copy

import numpy as np
import pytest
from evalhelpers import assert_close, run_lvis_api

from det_ext.evaluation import LVISStyleEval, evaluate_lvis


def _gt(images, anns, cats=None):
    cats = cats or [{"id": 1, "name": "a", "frequency": "f", "instance_count": 500},
                    {"id": 2, "name": "b", "frequency": "c", "instance_count": 50},
                    {"id": 3, "name": "c", "frequency": "r", "instance_count": 5}]
    images = [{"height": 100, "width": 100, "neg_category_ids": [],
               "not_exhaustive_category_ids": [], **im} for im in images]
    anns = [{"area": a["bbox"][2] * a["bbox"][3], **a} for a in anns]
    return {"images": images, "annotations": anns, "categories": cats}


def _det(img, cat, box, score):
    return {"image_id": img, "category_id": cat, "bbox": box, "score": score}


def _both(gt, dets, **kw):
    ref, ref_p, ref_r = run_lvis_api(gt, dets, "bbox", kw.get("max_dets", 300))
    ev = LVISStyleEval(gt, copy.deepcopy(dets), "bbox", **kw).run()
    assert_close(ev.results, {k.replace("@300", ev.ar_key[2:]): v for k, v in ref.items()})
    np.testing.assert_array_equal(ev.precision, ref_p)
    np.testing.assert_array_equal(ev.recall, ref_r)
    return ev


# Perfect AP is 1 - 2e-16 or so in both APIs (precision = tp / (tp + fp + eps)).
ONE = pytest.approx(1.0, abs=1e-12)
# IoU of [0, 0, 10, 10] with [0, 0, 10, 7] is 0.7: a match at thresholds 0.50 ... 0.70 (5 of 10).
GT_BOX, BOX_07 = [0, 0, 10, 10], [0, 0, 10, 7]


def test_hand_computed_ap_fp_before_tp():
    gt = _gt([{"id": 1}], [{"id": 1, "image_id": 1, "category_id": 1, "bbox": GT_BOX}])
    dets = [_det(1, 1, [50, 50, 10, 10], 0.9), _det(1, 1, BOX_07, 0.8)]
    ev = _both(gt, dets)
    # Matched thresholds: precision 0.5 at every recall point (FP first); others: 0.
    assert ev.results["AP"] == pytest.approx(5 / 10 * 0.5, abs=1e-12)
    assert ev.results["AP50"] == pytest.approx(0.5, abs=1e-12)
    assert ev.results["AP75"] == 0.0
    assert ev.results["AR@300"] == pytest.approx(0.5, abs=1e-12)
    assert ev.results["APf"] == ev.results["AP"]
    assert ev.results["APr"] == -1 and ev.results["APc"] == -1  # no GT in those groups


def test_category_without_gt_and_image_without_detections():
    gt = _gt([{"id": 1}, {"id": 2}, {"id": 3}],
             [{"id": 1, "image_id": 1, "category_id": 1, "bbox": GT_BOX},
              {"id": 2, "image_id": 2, "category_id": 1, "bbox": GT_BOX}])
    dets = [_det(1, 1, GT_BOX, 0.5)]  # image 2 and 3 have no detection at all
    ev = _both(gt, dets)
    ap = ev.per_category_ap()
    # recall 1/2: precision 1 at the 51 recall points 0.00 ... 0.50, 0 at the 50 others
    assert ap[0] == pytest.approx(51 / 101, abs=1e-12) and ap[1] == -1 and ap[2] == -1
    assert ev.results["AR@300"] == pytest.approx(0.5)


def test_federated_negatives_count_unlisted_categories_are_dropped():
    gt = _gt([{"id": 1, "neg_category_ids": [2]}],
             [{"id": 1, "image_id": 1, "category_id": 1, "bbox": GT_BOX}])
    tp = _det(1, 1, GT_BOX, 0.5)
    ev_neg = _both(gt, [tp, _det(1, 2, [30, 30, 10, 10], 0.9)])  # negative category: FP
    ev_unl = _both(gt, [tp, _det(1, 3, [30, 30, 10, 10], 0.9)])  # unlisted category: dropped
    ev_fp = _both(gt, [tp, _det(1, 1, [30, 30, 10, 10], 0.9)])  # FP of the positive category
    assert ev_neg.results["AP"] == ONE and ev_unl.results["AP"] == ONE  # cats 2/3: no GT
    assert ev_fp.results["AP"] == pytest.approx(0.5, abs=1e-12)
    assert ev_unl.num_dt.sum() == 1 and ev_neg.num_dt.sum() == 2


def test_not_exhaustive_category_ignores_unmatched_detections():
    gt = _gt([{"id": 1, "not_exhaustive_category_ids": [1]}],
             [{"id": 1, "image_id": 1, "category_id": 1, "bbox": GT_BOX}])
    dets = [_det(1, 1, [30, 30, 10, 10], 0.9), _det(1, 1, GT_BOX, 0.5)]
    ev = _both(gt, dets)
    assert ev.results["AP"] == ONE  # the unmatched higher-scoring box is ignored


def test_score_ties_keep_input_order_across_and_within_images():
    gt = _gt([{"id": 2}, {"id": 1}],
             [{"id": 1, "image_id": 1, "category_id": 1, "bbox": GT_BOX},
              {"id": 2, "image_id": 2, "category_id": 1, "bbox": GT_BOX},
              {"id": 3, "image_id": 2, "category_id": 1, "bbox": [20, 20, 10, 10]}])
    dets = [_det(2, 1, [60, 60, 10, 10], 0.5), _det(1, 1, GT_BOX, 0.5),
            _det(2, 1, GT_BOX, 0.5), _det(1, 1, [70, 70, 5, 5], 0.5),
            _det(2, 1, [20, 20, 10, 9], 0.5), _det(1, 1, GT_BOX, 0.5)]
    _both(gt, dets)
    _both(gt, dets[::-1])


def test_tie_between_ground_truths_of_equal_iou_goes_to_the_last():
    # Two identical GT boxes: the first detection takes the later one, the second the other.
    gt = _gt([{"id": 1}], [{"id": 1, "image_id": 1, "category_id": 1, "bbox": GT_BOX},
                           {"id": 2, "image_id": 1, "category_id": 1, "bbox": GT_BOX,
                            "ignore": 1}])
    dets = [_det(1, 1, GT_BOX, 0.9), _det(1, 1, [0, 0, 10, 9], 0.8)]
    ev = _both(gt, dets)
    assert ev.results["AP50"] == ONE


def test_zero_area_detections_are_dropped_but_count_towards_the_image_limit():
    gt = _gt([{"id": 1}], [{"id": 1, "image_id": 1, "category_id": 1, "bbox": GT_BOX}])
    dets = [_det(1, 1, [5, 5, 0, 10], 0.9), _det(1, 1, GT_BOX, 0.1)]
    assert _both(gt, dets, max_dets=300).results["AP"] == ONE
    assert _both(gt, dets, max_dets=1).results["AP"] == 0.0


def test_area_ranges_use_inclusive_bounds():
    gt = _gt([{"id": 1}], [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 32, 32]},
                           {"id": 2, "image_id": 1, "category_id": 1, "bbox": [40, 40, 8, 8]}])
    dets = [_det(1, 1, [0, 0, 32, 32], 0.9), _det(1, 1, [40, 40, 8, 8], 0.8),
            _det(1, 1, [0, 50, 50, 50], 0.7)]
    ev = _both(gt, dets)
    assert ev.results["APs"] == ONE and ev.results["APm"] == ONE  # area 1024: small, medium


def test_empty_results_give_zero_ap():
    gt = _gt([{"id": 1}], [{"id": 1, "image_id": 1, "category_id": 1, "bbox": GT_BOX}])
    out = evaluate_lvis(gt, [], "bbox")  # the LVIS API itself crashes on an empty list
    assert out["AP"] == 0.0 and out["AR@300"] == 0.0 and out["APr"] == -1


def test_ground_truth_annotation_id_zero_counts_as_unmatched():
    gt = _gt([{"id": 1}], [{"id": 0, "image_id": 1, "category_id": 1, "bbox": GT_BOX},
                           {"id": 5, "image_id": 1, "category_id": 1, "bbox": [50, 50, 9, 9]}])
    dets = [_det(1, 1, GT_BOX, 0.9), _det(1, 1, [50, 50, 9, 9], 0.8)]
    _both(gt, dets)


def test_bins_and_per_category_hand_computed():
    gt = _gt([{"id": 1}], [{"id": 1, "image_id": 1, "category_id": 1, "bbox": GT_BOX},
                           {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 10, 10]}])
    dets = [_det(1, 1, GT_BOX, 0.9), _det(1, 2, [0, 60, 10, 10], 0.9)]
    out = evaluate_lvis(gt, dets, "bbox", bins=[0, 10, 100, 1000])
    assert [b["AP"] for b in out["bins"]] == [-1.0, 0.0, ONE, -1.0]
    assert [b["num_categories"] for b in out["bins"]] == [1, 1, 1, 0]
    by_id = {c["id"]: c for c in out["per_category"]}
    assert by_id[1]["AP"] == ONE and by_id[2]["AP"] == 0.0 and by_id[3]["AP"] == -1.0
    assert by_id[1]["instance_count"] == 500 and by_id[1]["num_gt"] == 1
    coco_lt = evaluate_lvis(gt, dets, "bbox", bins="coco_lt")["bins"]
    assert [b["range"][0] for b in coco_lt] == [1, 20, 400, 8000]
    assert [b["num_categories"] for b in coco_lt] == [1, 1, 1, 0]
