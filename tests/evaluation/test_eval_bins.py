# Copyright (c) det_ext authors.
"""Training-count bins: presets, specifications, membership."""
import math

import numpy as np
import pytest

from det_ext.evaluation import COCO_LT_BINS, LVIS_BINS, EvaluationInputError, parse_bins
from det_ext.evaluation.results import bin_results, to_percent


def test_presets_and_specifications():
    inf = math.inf
    assert COCO_LT_BINS == ((1, 20), (20, 400), (400, 8000), (8000, inf))
    assert LVIS_BINS == ((0, 10), (10, 100), (100, 1000), (1000, inf))
    assert parse_bins(None) == LVIS_BINS and parse_bins("coco_lt") == COCO_LT_BINS
    assert parse_bins([1, 20, 400, 8000]) == COCO_LT_BINS
    assert parse_bins([[0, 5], [5, 50]]) == ((0, 5), (5, 50))
    for bad in ("nope", [10, 5], [], [[3, 3]]):
        with pytest.raises(EvaluationInputError):
            parse_bins(bad)


def test_bin_membership_is_half_open_and_uses_the_count_field():
    counts = [0, 1, 19, 20, 399, 400, 7999, 8000, None]
    cats = [{"id": i, "instance_count": c} for i, c in enumerate(counts)]
    prec = np.zeros((10, 101, len(cats), 4))
    prec[:, :, 3] = 1.0  # category with count 20 has AP 1
    prec[:, :, 8] = -1  # no ground truth
    bins = bin_results(prec, cats, "coco_lt")
    assert [b["num_categories"] for b in bins] == [2, 2, 2, 1]
    assert [b["AP"] for b in bins] == [0.0, 0.5, 0.0, 0.0]
    by_image = bin_results(prec, [{"id": 0, "image_count": 5}] * len(cats), [0, 10],
                           count_key="image_count")
    assert by_image[0]["num_categories"] == len(cats) and by_image[1]["AP"] == -1


def test_percent_conversion():
    assert to_percent(0.25) == 25.0 and math.isnan(to_percent(-1.0))
