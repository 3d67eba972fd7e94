# Copyright (c) det_ext authors.
"""det_ext's LVIS-style evaluation against the real LVIS API (lvis 0.5.3 under a numpy shim)."""
import copy
from collections import defaultdict

import numpy as np
import pytest
from evalhelpers import assert_close, random_problem, run_lvis_api, segm_only

from det_ext.evaluation import LVISStyleEval, evaluate_lvis


def _compare(gt, dets, iou_type, max_dets=300):
    ref, ref_p, ref_r = run_lvis_api(gt, dets, iou_type, max_dets)
    ev = LVISStyleEval(gt, copy.deepcopy(dets), iou_type, max_dets=max_dets).run()
    ref = {k.replace("@300", f"@{max_dets}"): v for k, v in ref.items()}
    assert_close(ev.results, ref)
    np.testing.assert_allclose(ev.precision, ref_p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ev.recall, ref_r, rtol=0, atol=1e-12)
    return ev


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bbox_matches_lvis_api(seed):
    gt, dets = random_problem(seed, dets_per_image=30 + 10 * seed)
    ev = _compare(gt, dets, "bbox")
    assert 0 < ev.results["AP"] < 1


@pytest.mark.parametrize("max_dets", [1, 7, 25])
def test_bbox_per_image_limit_matches_lvis_api(max_dets):
    gt, dets = random_problem(5, dets_per_image=40, score_decimals=1)
    _compare(gt, dets, "bbox", max_dets=max_dets)


def test_segm_matches_lvis_api():
    gt, dets = random_problem(3, num_images=8, dets_per_image=30, segm=True)
    _compare(gt, segm_only(dets), "segm")


def test_segm_with_box_areas_matches_lvis_api():
    # Results that carry "bbox" make the LVIS API use box areas for segm too.
    gt, dets = random_problem(4, num_images=6, dets_per_image=25, segm=True)
    _compare(gt, dets, "segm", max_dets=20)


def test_evaluate_lvis_returns_get_results_keys_and_extras():
    gt, dets = random_problem(7)
    ref, _, _ = run_lvis_api(gt, dets, "bbox")
    out = evaluate_lvis(gt, copy.deepcopy(dets), "bbox")
    assert list(out)[: len(ref)] == list(ref)
    assert_close(out, ref)
    assert {"bins", "per_category", "params"} <= set(out)
    assert len(out["per_category"]) == len(gt["categories"])


def _limit_per_cat(dets, k):
    """The LVIS 2021 challenge branch's ``limit_dets_per_cat`` (reference for the cap)."""
    by_cat = defaultdict(list)
    for d in dets:
        by_cat[d["category_id"]].append(d)
    return [d for anns in by_cat.values()
            for d in sorted(anns, key=lambda a: a["score"], reverse=True)[:k]]


def _limit_per_image(dets, k):
    """The LVIS API's ``limit_dets_per_image``."""
    by_img = defaultdict(list)
    for d in dets:
        by_img[d["image_id"]].append(d)
    for img, anns in by_img.items():
        if len(anns) > k:
            by_img[img] = sorted(anns, key=lambda a: a["score"], reverse=True)[:k]
    return [d for anns in by_img.values() for d in anns]


@pytest.mark.parametrize("max_dets", [None, 15])
def test_per_category_cap_matches_challenge_semantics(max_dets):
    gt, dets = random_problem(11, dets_per_image=40, score_decimals=1)
    capped = dets if max_dets is None else _limit_per_image(dets, max_dets)
    capped = _limit_per_cat(capped, 12)
    ref, _, _ = run_lvis_api(gt, capped, "bbox", max_dets=-1)
    out = evaluate_lvis(gt, dets, "bbox", max_dets=max_dets, max_dets_per_cat=12)
    ref = {k.replace("@300", "@all" if max_dets is None else f"@{max_dets}"): v
           for k, v in ref.items()}
    assert_close(out, ref)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10, 30))
def test_many_random_problems_match_lvis_api(seed):
    segm = seed % 4 == 0
    gt, dets = random_problem(seed, num_images=10 + seed % 7, num_cats=5 + seed % 11,
                              dets_per_image=20 + 3 * seed, segm=segm,
                              score_decimals=1 + seed % 3)
    _compare(gt, segm_only(dets) if segm else dets, "segm" if segm else "bbox",
             max_dets=[300, 10, 33][seed % 3])
