# Copyright (c) det_ext authors.
"""SimCal bi-level sampling: image-level class balance and proposal-level composition."""
from collections import Counter

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, Instances

from det_ext.modeling.simcal import (
    BiLevelClassBalancedDataset,
    class_to_image_index,
    compose_calibration_batch,
    label_proposals,
)
from det_ext.utils.errors import ConfigInputError


def _labels_of(d):
    return {a["category_id"] for a in d["annotations"] if not a.get("iscrowd", 0)}


def test_image_level_uniform_over_classes_on_tiny_world(tiny_world):
    dicts = DatasetCatalog.get(tiny_world["train"])
    num_classes = 8
    index = class_to_image_index(dicts, num_classes)
    # independent count of images per class
    for c in range(num_classes):
        assert len(index[c]) == sum(c in _labels_of(d) for d in dicts)
    candidates = [c for c in range(num_classes) if len(index[c])]
    ds = BiLevelClassBalancedDataset(dicts, num_classes, classes_per_batch=4, images_per_class=2,
                                     seed=0)
    rng = np.random.default_rng(0)
    episodes = ds.episodes(rng)
    counts = Counter()
    n_steps = 2000
    for _ in range(n_steps):
        step = next(episodes)
        assert len(step) == 8
        # class-major: images_per_class consecutive images per sampled class
        assert [c for c, _ in step][::2] == [c for c, _ in step][1::2]
        for c, idx in step:
            assert c in _labels_of(dicts[idx])  # the image contains its sampled class
        counts.update(c for c, _ in step[::2])
    assert set(counts) == set(candidates)
    expected = n_steps * 4 / len(candidates)
    for c in candidates:  # uniform over classes: ~1000 draws each, 5 sigma < 15%
        assert abs(counts[c] - expected) < 0.15 * expected, (c, counts[c], expected)
    # the images of a rare class are as likely as those of the head class
    freq = sorted(candidates, key=lambda c: len(index[c]))
    assert counts[freq[0]] > 0.85 * expected and counts[freq[-1]] < 1.15 * expected


def test_iterable_stream_carries_sampled_class_and_respects_no_replacement(tiny_world):
    dicts = DatasetCatalog.get(tiny_world["train"])
    ds = BiLevelClassBalancedDataset(dicts, 8, classes_per_batch=4, images_per_class=1, seed=3,
                                     with_replacement=False)
    it = iter(ds)
    for _ in range(50):
        step = [next(it) for _ in range(4)]
        classes = [d["simcal_class"] for d in step]
        assert len(set(classes)) == 4
        assert all(d["simcal_class"] in _labels_of(d) for d in step)
    with pytest.raises(ConfigInputError, match="SIMCAL.CLASSES_PER_BATCH"):
        BiLevelClassBalancedDataset(dicts, 8, classes_per_batch=9, images_per_class=1,
                                    with_replacement=False)
    # same seed -> same stream
    a = [next(iter(ds))["image_id"] for _ in range(1)]
    b = [next(iter(BiLevelClassBalancedDataset(dicts, 8, 4, 1, seed=3, with_replacement=False)))
         ["image_id"]]
    assert a == b


def _targets(boxes, classes):
    t = Instances((100, 100))
    t.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    t.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return t


def _proposals(boxes):
    p = Instances((100, 100))
    p.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    p.objectness_logits = torch.zeros(len(p.proposal_boxes))
    return p


def test_label_proposals_iou_half_and_gt_added():
    tgt = _targets([[0, 0, 10, 10], [50, 50, 70, 70]], [2, 5])
    # IoU with gt 0: [0,0,10,20] -> 100/200 = 0.5 (positive); [0,0,10,21] -> 100/210 < 0.5
    props = _proposals([[0, 0, 10, 20], [0, 0, 10, 21], [52, 52, 70, 70], [80, 80, 99, 99]])
    (boxes, labels), = label_proposals([props], [tgt], num_classes=8, batch_size_per_image=100,
                                       positive_fraction=1.0)
    got = {tuple(b.tolist()): int(lab) for b, lab in zip(boxes.tensor, labels)}
    assert got[(0.0, 0.0, 10.0, 20.0)] == 2
    assert got[(0.0, 0.0, 10.0, 21.0)] == 8  # background
    assert got[(52.0, 52.0, 70.0, 70.0)] == 5  # IoU 324/400 = 0.81
    assert got[(80.0, 80.0, 99.0, 99.0)] == 8
    assert got[(0.0, 0.0, 10.0, 10.0)] == 2 and got[(50.0, 50.0, 70.0, 70.0)] == 5  # GT added
    # per-image subsampling: 512 RoIs at 25% positives
    many = _proposals([[0, 0, 10, 10]] * 300 + [[80, 80, 99, 99]] * 900)
    (boxes, labels), = label_proposals([many], [tgt], num_classes=8, batch_size_per_image=512,
                                       positive_fraction=0.25)
    assert len(labels) == 512 and int((labels < 8).sum()) == 128


@pytest.mark.parametrize("images_per_class", [1, 2])
def test_composed_batch_keeps_only_sampled_class_positives_at_one_to_one(images_per_class):
    g = torch.Generator().manual_seed(0)
    num_classes = 10
    labels, sampled = [], []
    for i in range(8):
        cls = (i // images_per_class) % num_classes
        lab = torch.randint(0, num_classes, (40,), generator=g)
        lab[:5] = cls  # at least 5 positives of the sampled class
        lab = torch.cat([lab, torch.full((30,), num_classes)])  # 30 negatives per image
        labels.append(lab[torch.randperm(len(lab), generator=g)])
        sampled.append(cls)
    keep = compose_calibration_batch(labels, sampled, num_classes, 1.0, generator=g)
    n_pos = n_neg = 0
    for lab, cls, k in zip(labels, sampled, keep):
        kept = lab[k]
        fg = kept[kept != num_classes]
        assert (fg == cls).all()  # only positives of the image's sampled class
        assert len(fg) == int((lab == cls).sum())  # all of them
        n_pos += len(fg)
        n_neg += int((kept == num_classes).sum())
        assert len(set(k.tolist())) == len(k)  # no duplicates
    assert n_pos == n_neg  # fg:bg = 1:1 over the batch
    # negatives are pooled: some image contributes more than its own positives' worth
    per_img_neg = [int((lab[k] == num_classes).sum()) for lab, k in zip(labels, keep)]
    per_img_pos = [int((lab[k] != num_classes).sum()) for lab, k in zip(labels, keep)]
    assert per_img_neg != per_img_pos


def test_compose_with_too_few_negatives_keeps_all_of_them():
    labels = [torch.tensor([1, 1, 1, 4]), torch.tensor([2, 4])]
    keep = compose_calibration_batch(labels, [1, 0], num_classes=4)
    assert sorted(keep[0].tolist()) == [0, 1, 2, 3] and keep[1].tolist() == [1]
