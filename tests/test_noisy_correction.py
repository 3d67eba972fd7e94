# Copyright (c) det_ext authors.
"""Box-differentiable pooling, soft labels and the two correction steps on hand-built cases."""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes, Instances, pairwise_iou
from torch import nn
from torchvision.ops import roi_align

from det_ext.modeling.noisy import (
    CorrectionParams,
    bilinear_box_pool,
    correct_boxes_step1,
    correct_targets,
    discrepancy,
    distill_labels_and_boxes,
    foreground_distribution,
    sharpen,
    soft_cross_entropy,
)


def test_pooling_equals_roi_align_inside_the_image():
    torch.manual_seed(0)
    feats = [torch.randn(2, 3, 16, 16, dtype=torch.float64),
             torch.randn(2, 3, 8, 8, dtype=torch.float64)]
    boxes = torch.tensor([[3.3, 4.1, 30.7, 20.2], [10.5, 9.7, 50.2, 60.3], [1.2, 2.9, 60.1, 61.8]],
                         dtype=torch.float64)
    batch, levels, scales = torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), [0.25, 0.125]
    out = bilinear_box_pool(feats, boxes, batch, levels, scales, 7, 2)
    for i in range(3):
        lvl = int(levels[i])
        rois = torch.cat([batch[i:i + 1, None].double(), boxes[i:i + 1]], dim=1)
        ref = roi_align(feats[lvl], rois, 7, scales[lvl], 2, aligned=True)
        torch.testing.assert_close(out[i:i + 1], ref, atol=1e-12, rtol=0)


def test_pooling_gradient_wrt_boxes_matches_finite_differences():
    torch.manual_seed(1)
    feats = [torch.randn(1, 2, 12, 12, dtype=torch.float64)]
    # (no sample point may fall exactly on a feature-grid line, where bilinear sampling has a kink)
    boxes = torch.tensor([[5.13, 7.31, 31.77, 27.49], [2.21, 3.57, 17.97, 40.11]],
                         dtype=torch.float64, requires_grad=True)
    idx = torch.zeros(2, dtype=torch.long)
    assert torch.autograd.gradcheck(
        lambda b: bilinear_box_pool(feats, b, idx, idx, [0.25], 3, 2), (boxes,), eps=1e-6,
        atol=1e-6)


def test_sharpen_values():
    p = torch.tensor([[0.6, 0.3, 0.1]])
    # T = 0.5 squares and renormalises: [0.36, 0.09, 0.01] / 0.46.
    torch.testing.assert_close(sharpen(p, 0.5), torch.tensor([[0.36, 0.09, 0.01]]) / 0.46)
    torch.testing.assert_close(sharpen(p, 1.0), p)
    assert sharpen(p, 0.05)[0, 0] > 0.999
    with pytest.raises(ValueError):
        sharpen(p, 0.0)


def test_soft_cross_entropy_and_discrepancy_values():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    onehot = F.one_hot(torch.tensor([0, 2]), 3).float()
    torch.testing.assert_close(soft_cross_entropy(logits, onehot),
                               F.cross_entropy(logits, torch.tensor([0, 2])))
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    logp = F.log_softmax(logits, 1)
    expected = (-(0.5 * logp[0, 0] + 0.5 * logp[0, 1]) - logp[1, 2]) / 2
    torch.testing.assert_close(soft_cross_entropy(logits, soft), expected)
    p1, p2 = torch.tensor([[0.7, 0.2, 0.1]]), torch.tensor([[0.5, 0.1, 0.4]])
    assert discrepancy(p1, p2, "l1").item() == pytest.approx(0.6)
    assert discrepancy(p1, p2, "l2").item() == pytest.approx(0.04 + 0.01 + 0.09)
    assert discrepancy(p1, p1, "js").item() == pytest.approx(0.0, abs=1e-7)
    torch.testing.assert_close(foreground_distribution(torch.tensor([[0.3, 0.1, 0.6]])),
                               torch.tensor([[0.75, 0.25]]))


class _MeanHead(nn.Module):
    """Box head, (N, 2, P, P) -> (N, 1): the mean of channel 0 ("inside the object") plus the mean
    of channel 1 ("object edge") over the outer ring of bins. It is largest when the box covers the
    object only and its sides lie on the object's edges, i.e. at the target box."""

    def forward(self, x):
        ring = torch.ones_like(x[0, 1], dtype=torch.bool)
        ring[1:-1, 1:-1] = False
        return (x[:, 0].mean(dim=(1, 2)) + x[:, 1][:, ring].mean(dim=1))[:, None]


class _ConstHead(nn.Module):
    def forward(self, x):
        return x.new_ones((len(x), 1))


class _Predictor(nn.Module):
    """Logits ``[w * m + b_cls, ..., 0 (background)]`` and constant class-specific deltas."""

    def __init__(self, weights, biases, deltas):
        super().__init__()
        self.weights = nn.Parameter(torch.tensor(weights + [0.0]))
        self.biases = nn.Parameter(torch.tensor(biases + [0.0]))
        self.deltas = torch.tensor(deltas).flatten()
        self.box2box_transform = Box2BoxTransform((1.0, 1.0, 1.0, 1.0))

    def forward(self, x):
        return x * self.weights + self.biases, self.deltas.expand(len(x), -1)


class _Heads(nn.Module):
    """The attributes of DualHeadROIHeads that the correction uses."""

    def __init__(self, pred1, pred2, num_classes=1):
        super().__init__()
        self.box_in_features = ["p2"]
        self.box_pooler = ROIPooler((7, 7), scales=(1.0,), sampling_ratio=2,
                                    pooler_type="ROIAlignV2")
        self.num_classes = num_classes
        self.h1, self.h2, self.p1, self.p2 = _MeanHead(), _MeanHead(), pred1, pred2

    def heads(self):
        return [(self.h1, self.p1), (self.h2, self.p2)]


def _target_world():
    """A 64x64 feature map around the target box [20, 20, 40, 40]: channel 0 is +1 inside, -1
    outside; channel 1 is 1 on the target's edges. Smoothed (a step has a zero gradient almost
    everywhere under bilinear sampling; real features are smooth)."""
    feat = -torch.ones(1, 2, 64, 64)
    feat[:, 0, 20:40, 20:40] = 1.0
    feat[:, 1] = 0.0
    feat[:, 1, 19:41, 19:41] = 1.0
    feat[:, 1, 21:39, 21:39] = 0.0  # the edge band of the target
    for _ in range(2):
        feat = F.avg_pool2d(feat, 5, stride=1, padding=2, count_include_pad=False)
    return {"p2": feat}, torch.tensor([[20.0, 20.0, 40.0, 40.0]])


def _iou(a, b):
    return pairwise_iou(Boxes(a), Boxes(b)).item()


def test_box_correction_moves_a_shifted_box_toward_the_target():
    features, target = _target_world()
    # Identical heads (zero discrepancy): L = -o(b) = -(1 - p_bg), p_bg = sigmoid(-8 m), with m the
    # head's score, largest at the target box.
    pred = _Predictor([8.0], [0.0], [[0.0] * 4])
    heads = _Heads(pred, pred)
    noisy = torch.tensor([[27.0, 25.0, 47.0, 46.0]])
    params = CorrectionParams(steps=1, step_size=0.05, normalize_grad=True, max_step=0.2)
    args = (torch.zeros(1, dtype=torch.long), torch.tensor([[64, 64]]))
    one = correct_boxes_step1(heads, features, noisy, *args, params)
    many = correct_boxes_step1(heads, features, noisy, *args,
                               CorrectionParams(steps=24, step_size=0.05, normalize_grad=True))
    assert _iou(one, target) > _iou(noisy, target) + 0.03
    assert _iou(many, target) > 0.6 > _iou(noisy, target) + 0.25
    # Each side moved toward the corresponding target side.
    assert (one - target).abs().sum() < (noisy - target).abs().sum()


def test_discrepancy_alone_moves_the_box_into_agreement():
    features, target = _target_world()
    # Head 2 is confident "object" everywhere; head 1 agrees only where the box covers the target.
    heads = _Heads(_Predictor([8.0], [0.0], [[0.0] * 4]), _Predictor([0.0], [8.0], [[0.0] * 4]))
    noisy = torch.tensor([[27.0, 25.0, 47.0, 46.0]])
    params = CorrectionParams(steps=6, step_size=0.05, normalize_grad=True, objectness="none")
    args = (torch.zeros(1, dtype=torch.long), torch.tensor([[64, 64]]))
    fixed = correct_boxes_step1(heads, features, noisy, *args, params)

    def disc(b):
        x = heads.box_pooler([features["p2"]], [Boxes(b)])
        return discrepancy(torch.softmax(heads.p1(heads.h1(x))[0], 1),
                           torch.softmax(heads.p2(heads.h2(x))[0], 1)).item()

    assert disc(fixed) < disc(noisy)
    assert _iou(fixed, target) > _iou(noisy, target)


def test_label_distillation_and_box_refinement_values():
    features, _ = _target_world()
    box = torch.tensor([[20.0, 20.0, 40.0, 40.0]])
    deltas = [[0.1, 0.0, 0.0, 0.0], [-0.1, 0.0, 0.0, 0.0]]  # class 0 right, class 1 left
    # Logits (class0, class1, bg): head 1 (1, 3, 0), head 2 (2, 2, 0).
    heads = _Heads(_Predictor([1.0, 3.0], [0.0, 0.0], deltas),
                   _Predictor([2.0, 2.0], [0.0, 0.0], deltas), num_classes=2)
    heads.h1 = heads.h2 = _ConstHead()  # m = 1
    noisy_label = torch.tensor([0])
    args = (box, torch.zeros(1, dtype=torch.long), noisy_label, torch.tensor([[64, 64]]))
    soft, refined = distill_labels_and_boxes(heads, features, *args, CorrectionParams())
    fg1 = torch.tensor([math.e, math.e ** 3]) / (math.e + math.e ** 3)
    mean = (fg1 + torch.tensor([0.5, 0.5]) + torch.tensor([1.0, 0.0])) / 3
    expected = mean ** 2 / (mean ** 2).sum()
    torch.testing.assert_close(soft[0], expected, atol=1e-5, rtol=0)
    dx = 0.1 * expected[0] - 0.1 * expected[1]  # soft-weighted class deltas
    torch.testing.assert_close(refined, box + torch.tensor([[dx * 20, 0, dx * 20, 0]]),
                               atol=1e-4, rtol=0)
    _, arg = distill_labels_and_boxes(heads, features, *args,
                                      CorrectionParams(refinement_weighting="argmax",
                                                       include_noisy_label=False))
    # Without the noisy label the heads vote class 1 (shift left by 0.1 * w).
    torch.testing.assert_close(arg, box + torch.tensor([[-2.0, 0, -2.0, 0]]), atol=1e-4, rtol=0)
    off, same = distill_labels_and_boxes(heads, features, *args,
                                         CorrectionParams(label_correction=False,
                                                          box_refinement=False))
    torch.testing.assert_close(off, torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(same, box)


def test_correct_targets_scores_against_clean_boxes_and_touches_no_parameter():
    features, target = _target_world()
    features = {"p2": features["p2"].clone().requires_grad_(True)}
    pred = _Predictor([8.0], [0.0], [[0.0] * 4])
    heads = _Heads(pred, pred)
    inst = Instances((64, 64), gt_boxes=Boxes(torch.tensor([[27.0, 25.0, 47.0, 46.0]])),
                     gt_classes=torch.tensor([0]), gt_clean_boxes=Boxes(target),
                     gt_clean_classes=torch.tensor([0]))
    params = CorrectionParams(steps=3, step_size=0.05, normalize_grad=True)
    out, stats = correct_targets(heads, features, [inst], params)
    assert stats["iou_step1"] > stats["iou_noisy"]
    assert stats["label_acc_noisy"] == stats["label_acc_corrected"] == 1.0
    assert not out[0].gt_boxes.tensor.requires_grad and not out[0].gt_soft_classes.requires_grad
    torch.testing.assert_close(out[0].gt_noisy_boxes.tensor, inst.gt_boxes.tensor)
    assert features["p2"].grad is None
    assert all(p.grad is None for p in heads.parameters())


def test_bad_correction_parameters():
    with pytest.raises(ValueError, match="OBJECTNESS"):
        CorrectionParams(objectness="bogus")
    with pytest.raises(ValueError, match="discrepancy"):
        CorrectionParams(discrepancy="kl2")
    with pytest.raises(ValueError, match="TEMPERATURE"):
        CorrectionParams(temperature=0.0)
