# Copyright (c) det_ext authors.
"""Two-step correction of noisy box annotations with two detection heads (a reconstruction).

Step 1, class-agnostic box correction: each annotated box b takes gradient steps on its coordinates
that minimise ``L(b) = D(p1(b), p2(b)) - lambda * o(b)``, D the discrepancy of the two heads' class
distributions at b and o(b) a region objectness. Only the boxes receive gradients (features and
heads are not updated by this step). Step 2: the soft label
``y* = sharpen(mean(p1, p2[, onehot]), T)`` (foreground-renormalised distributions at the
corrected box) and the class-specific refinement
``b** = apply_deltas(b*, sum_c y*_c (delta1_c + delta2_c) / 2)``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.structures import Boxes, Instances, pairwise_iou
from torch import nn

from .pooling import bilinear_box_pool
from .soft_labels import discrepancy, foreground_distribution, sharpen

__all__ = ["CorrectionParams", "correct_boxes_step1", "distill_labels_and_boxes",
           "rpn_box_objectness", "correct_targets"]


@dataclasses.dataclass(frozen=True)
class CorrectionParams:
    """Hyperparameters of the correction (``cfg.NOISY``; see det_ext/config/noisy.py)."""

    box_correction: bool = True
    steps: int = 1
    step_size: float = 0.1
    scale_by_size: bool = True
    normalize_grad: bool = False
    max_step: float = 0.2
    discrepancy: str = "l1"
    objectness: str = "heads"
    objectness_weight: float = 1.0
    label_correction: bool = True
    temperature: float = 0.5
    include_noisy_label: bool = True
    box_refinement: bool = True
    refinement_weighting: str = "soft"
    sampling_ratio: int = 2

    @classmethod
    def from_cfg(cls, cfg: CfgNode) -> "CorrectionParams":
        n = cfg.NOISY
        return cls(
            box_correction=n.BOX_CORRECTION.ENABLED, steps=n.BOX_CORRECTION.STEPS,
            step_size=n.BOX_CORRECTION.STEP_SIZE, scale_by_size=n.BOX_CORRECTION.SCALE_BY_SIZE,
            normalize_grad=n.BOX_CORRECTION.NORMALIZE_GRAD, max_step=n.BOX_CORRECTION.MAX_STEP,
            discrepancy=n.BOX_CORRECTION.DISCREPANCY, objectness=n.BOX_CORRECTION.OBJECTNESS,
            objectness_weight=n.BOX_CORRECTION.OBJECTNESS_WEIGHT,
            label_correction=n.LABEL_CORRECTION.ENABLED,
            temperature=n.LABEL_CORRECTION.TEMPERATURE,
            include_noisy_label=n.LABEL_CORRECTION.INCLUDE_NOISY_LABEL,
            box_refinement=n.BOX_REFINEMENT.ENABLED,
            refinement_weighting=n.BOX_REFINEMENT.WEIGHTING,
            sampling_ratio=n.POOLER_SAMPLING_RATIO)

    def __post_init__(self) -> None:
        if self.objectness not in ("heads", "rpn", "none"):
            raise ValueError(f"NOISY.BOX_CORRECTION.OBJECTNESS must be 'heads', 'rpn' or 'none', "
                             f"got {self.objectness!r}")
        if self.refinement_weighting not in ("soft", "argmax"):
            raise ValueError("NOISY.BOX_REFINEMENT.WEIGHTING must be 'soft' or 'argmax', got "
                             f"{self.refinement_weighting!r}")
        if self.steps < 0 or self.step_size < 0 or self.max_step < 0:
            raise ValueError("NOISY.BOX_CORRECTION STEPS, STEP_SIZE and MAX_STEP must be >= 0")
        if self.temperature <= 0:
            raise ValueError("NOISY.LABEL_CORRECTION.TEMPERATURE must be positive")
        discrepancy(torch.zeros(1, 2), torch.zeros(1, 2), self.discrepancy)  # validates the name


def _clip(boxes: torch.Tensor, sizes: torch.Tensor, min_size: float = 1.0) -> torch.Tensor:
    """Clips (N, 4) XYXY boxes to their (N, 2) image sizes (h, w), keeping >= min_size sides."""
    h, w = sizes[:, 0].to(boxes.dtype), sizes[:, 1].to(boxes.dtype)
    x1 = torch.minimum(boxes[:, 0].clamp(min=0), w - min_size)
    y1 = torch.minimum(boxes[:, 1].clamp(min=0), h - min_size)
    x2 = torch.maximum(torch.minimum(boxes[:, 2], w), x1 + min_size)
    y2 = torch.maximum(torch.minimum(boxes[:, 3], h), y1 + min_size)
    return torch.stack([x1, y1, x2, y2], dim=1)


def rpn_box_objectness(rpn: nn.Module, features: Dict[str, torch.Tensor], boxes: torch.Tensor,
                       batch_index: torch.Tensor) -> torch.Tensor:
    """RPN objectness of boxes: sigmoid of the objectness logit of the anchor whose shape best
    matches the box (highest IoU when centred), sampled bilinearly at the box centre.

    Differentiable with respect to the box centre (not its size, which only selects the anchor).

    Args:
        rpn (nn.Module): Detectron2 ``RPN`` (``rpn_head``, ``anchor_generator``, ``in_features``).
        features (dict[str, Tensor]): backbone features (detached here).
        boxes (Tensor): (N, 4) XYXY boxes.
        batch_index (Tensor): (N,) image index.

    Returns:
        Tensor: (N,) objectness in (0, 1).
    """
    feats = [features[f].detach() for f in rpn.in_features]
    logits, _ = rpn.rpn_head(feats)  # list of (B, A, H, W)
    gen = rpn.anchor_generator
    cells = [c.to(boxes.device) for c in gen.cell_anchors]  # (A, 4) each, centred at 0
    shapes = torch.cat([torch.stack([c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]], 1) for c in cells])
    level_of = torch.cat([torch.full((len(c),), i, device=boxes.device) for i, c in
                          enumerate(cells)])
    anchor_of = torch.cat([torch.arange(len(c), device=boxes.device) for c in cells])
    with torch.no_grad():
        wh = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)
        inter = torch.minimum(wh[:, None, 0], shapes[None, :, 0]) * \
            torch.minimum(wh[:, None, 1], shapes[None, :, 1])
        union = wh.prod(1)[:, None] + shapes.prod(1)[None, :] - inter
        best = (inter / union).argmax(dim=1)
    levels, anchors = level_of[best], anchor_of[best]
    cx = 0.5 * (boxes[:, 0] + boxes[:, 2])
    cy = 0.5 * (boxes[:, 1] + boxes[:, 3])
    out = boxes.new_zeros(len(boxes))
    parts, order = [], []
    for lvl, maps in enumerate(logits):
        idx = torch.nonzero(levels == lvl, as_tuple=True)[0]
        if len(idx) == 0:
            continue
        stride = float(gen.strides[lvl])
        h, w = maps.shape[-2:]
        sel = maps[batch_index[idx], anchors[idx]].detach()[:, None]  # (n, 1, H, W)
        # Anchor (j, i) is centred at (j * stride + offset); align_corners=True indexes centres.
        gx = 2.0 * (cx[idx] / stride - gen.offset) / max(w - 1, 1) - 1.0
        gy = 2.0 * (cy[idx] / stride - gen.offset) / max(h - 1, 1) - 1.0
        grid = torch.stack([gx, gy], dim=1)[:, None, None, :].to(sel.dtype)
        val = F.grid_sample(sel, grid, mode="bilinear", padding_mode="border", align_corners=True)
        parts.append(val.view(-1))
        order.append(idx)
    if parts:
        out = out.index_put((torch.cat(order),), torch.cat(parts).to(out.dtype))
    return torch.sigmoid(out)


def correct_boxes_step1(roi_heads: nn.Module, features: Dict[str, torch.Tensor],
                        boxes: torch.Tensor, batch_index: torch.Tensor, image_sizes: torch.Tensor,
                        params: CorrectionParams, rpn: Optional[nn.Module] = None
                        ) -> torch.Tensor:
    """Class-agnostic box correction: ``params.steps`` gradient steps on the box coordinates.

    Args:
        roi_heads: a :class:`DualHeadROIHeads` (``box_in_features``, ``box_pooler``, ``heads()``).
        features (dict[str, Tensor]): backbone features; detached here.
        boxes (Tensor): (N, 4) XYXY noisy boxes.
        batch_index (Tensor): (N,) image index of each box.
        image_sizes (Tensor): (N, 2) (h, w) of each box's image, for clipping.
        params (CorrectionParams): hyperparameters.
        rpn (nn.Module or None): the RPN, needed when ``params.objectness == "rpn"``.

    Returns:
        Tensor: (N, 4) corrected boxes (no graph attached).
    """
    boxes = boxes.detach()
    if len(boxes) == 0 or params.steps == 0 or params.step_size == 0:
        return boxes
    feats = [features[f].detach() for f in roi_heads.box_in_features]
    pooler = roi_heads.box_pooler
    scales = [p.spatial_scale for p in pooler.level_poolers]
    per_image = [Boxes(boxes[batch_index == i]) for i in range(int(feats[0].shape[0]))]
    levels = torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
    if len(scales) > 1:
        lv = assign_boxes_to_levels(per_image, pooler.min_level, pooler.max_level,
                                    pooler.canonical_box_size, pooler.canonical_level)
        order = torch.cat([torch.nonzero(batch_index == i, as_tuple=True)[0]
                           for i in range(len(per_image))])
        levels[order] = lv
    for _ in range(params.steps):
        boxes = _gradient_step(boxes, feats, batch_index, levels, scales, pooler.output_size[0],
                               image_sizes, roi_heads.heads(), params, rpn, features)
    return boxes.detach()


@torch.enable_grad()
def _gradient_step(boxes, feats, batch_index, levels, scales, output_size, image_sizes, heads,
                   params: CorrectionParams, rpn, features) -> torch.Tensor:
    """One step ``b <- b - alpha * dL/db`` (see :func:`correct_boxes_step1`)."""
    (head1, pred1), (head2, pred2) = heads
    b = boxes.clone().requires_grad_(True)
    x = bilinear_box_pool(feats, b, batch_index, levels, scales, output_size,
                          params.sampling_ratio)
    p1 = torch.softmax(pred1(head1(x))[0], dim=1)
    p2 = torch.softmax(pred2(head2(x))[0], dim=1)
    loss = discrepancy(p1, p2, params.discrepancy)
    if params.objectness == "heads":
        loss = loss - params.objectness_weight * (1.0 - 0.5 * (p1[:, -1] + p2[:, -1]))
    elif params.objectness == "rpn":
        if rpn is None:
            raise ValueError("NOISY.BOX_CORRECTION.OBJECTNESS 'rpn' needs the RPN")
        loss = loss - params.objectness_weight * rpn_box_objectness(rpn, features, b,
                                                                    batch_index)
    (grad,) = torch.autograd.grad(loss.sum(), b)
    wh = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1).clamp_min(1.0)
    size = wh.repeat(1, 2)  # (w, h, w, h)
    g = grad * size if params.scale_by_size else grad  # d L / d (relative coordinate)
    if params.normalize_grad:
        g = g / g.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    if params.scale_by_size:
        step = (-params.step_size * g).clamp(-params.max_step, params.max_step) * size
    else:
        limit = params.max_step * size
        step = torch.maximum(torch.minimum(-params.step_size * g, limit), -limit)
    return _clip(boxes + step, image_sizes).detach()


@torch.no_grad()
def distill_labels_and_boxes(roi_heads: nn.Module, features: Dict[str, torch.Tensor],
                             boxes: torch.Tensor, batch_index: torch.Tensor,
                             noisy_labels: torch.Tensor, image_sizes: torch.Tensor,
                             params: CorrectionParams) -> Tuple[torch.Tensor, torch.Tensor]:
    """Step 2: soft labels distilled from both heads and class-specific box refinement.

    Args:
        boxes (Tensor): (N, 4) step-1 boxes b*.
        noisy_labels (Tensor): (N,) annotated (possibly wrong) labels in [0, K).
        (other arguments as in :func:`correct_boxes_step1`)

    Returns:
        tuple: soft labels (N, K) and refined boxes b** (N, 4).
    """
    k = roi_heads.num_classes
    onehot = F.one_hot(noisy_labels.long(), k).to(boxes.dtype)
    if len(boxes) == 0 or not (params.label_correction or params.box_refinement):
        return onehot, boxes
    feats = [features[f].detach() for f in roi_heads.box_in_features]
    n_img = int(feats[0].shape[0])
    order = torch.cat([torch.nonzero(batch_index == i, as_tuple=True)[0] for i in range(n_img)])
    x = roi_heads.box_pooler(feats, [Boxes(boxes[batch_index == i]) for i in range(n_img)])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    x = x[inverse]
    (head1, pred1), (head2, pred2) = roi_heads.heads()
    s1, d1 = pred1(head1(x))
    s2, d2 = pred2(head2(x))
    if params.label_correction:
        parts = [foreground_distribution(torch.softmax(s1, 1)),
                 foreground_distribution(torch.softmax(s2, 1))]
        if params.include_noisy_label:
            parts.append(onehot)
        soft = sharpen(torch.stack(parts).mean(0), params.temperature)
    else:
        soft = onehot
    if not params.box_refinement:
        return soft, boxes
    deltas = 0.5 * (d1 + d2)
    if deltas.shape[1] != 4:  # class-specific regression: (N, K * 4)
        deltas = deltas.view(len(boxes), k, 4)
        if params.refinement_weighting == "soft":
            deltas = (soft[:, :, None] * deltas).sum(dim=1)
        else:
            deltas = deltas[torch.arange(len(boxes), device=boxes.device), soft.argmax(1)]
    refined = pred1.box2box_transform.apply_deltas(deltas, boxes)
    return soft, _clip(refined, image_sizes)


def _mean_diag_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    if len(a) == 0:
        return float("nan")
    return float(torch.diagonal(pairwise_iou(Boxes(a), Boxes(b))).mean())


def correct_targets(roi_heads: nn.Module, features: Dict[str, torch.Tensor],
                    targets: Sequence[Instances], params: CorrectionParams,
                    rpn: Optional[nn.Module] = None) -> Tuple[List[Instances], Dict[str, float]]:
    """Runs both correction steps on the ground truth of a batch.

    Args:
        targets (list[Instances]): per image ``gt_boxes`` and ``gt_classes`` (optionally
            ``gt_clean_boxes`` / ``gt_clean_classes`` for scoring).

    Returns:
        tuple: the corrected targets (``gt_boxes`` = b**, ``gt_classes`` = argmax y*,
        ``gt_soft_classes`` = y*, and ``gt_noisy_boxes`` / ``gt_noisy_classes`` kept) and
        statistics (mean IoU with the clean boxes before/after each step, label accuracy) when
        the clean annotations are present.
    """
    device = targets[0].gt_boxes.tensor.device if targets else torch.device("cpu")
    boxes = torch.cat([t.gt_boxes.tensor for t in targets]) if targets else torch.zeros(0, 4)
    labels = torch.cat([t.gt_classes for t in targets]) if targets else torch.zeros(0)
    batch_index = torch.cat([torch.full((len(t),), i, device=device, dtype=torch.long)
                             for i, t in enumerate(targets)])
    sizes = torch.cat([torch.tensor([t.image_size], device=device).expand(len(t), 2)
                       for t in targets])
    step1 = boxes
    if params.box_correction:
        step1 = correct_boxes_step1(roi_heads, features, boxes, batch_index, sizes, params, rpn)
    soft, final = distill_labels_and_boxes(roi_heads, features, step1, batch_index, labels, sizes,
                                           params)
    out, start = [], 0
    for t in targets:
        end = start + len(t)
        new = Instances(t.image_size, **t.get_fields())
        new.gt_noisy_boxes = t.gt_boxes
        new.gt_noisy_classes = t.gt_classes
        new.gt_boxes = Boxes(final[start:end])
        new.gt_soft_classes = soft[start:end]
        new.gt_classes = soft[start:end].argmax(dim=1)
        out.append(new)
        start = end
    stats: Dict[str, Any] = {}
    if targets and all(t.has("gt_clean_boxes") for t in targets):
        clean = torch.cat([t.gt_clean_boxes.tensor for t in targets])
        clean_labels = torch.cat([t.gt_clean_classes for t in targets])
        stats = {"iou_noisy": _mean_diag_iou(boxes, clean),
                 "iou_step1": _mean_diag_iou(step1, clean),
                 "iou_corrected": _mean_diag_iou(final, clean),
                 "label_acc_noisy": float((labels == clean_labels).float().mean()),
                 "label_acc_corrected": float((soft.argmax(1) == clean_labels).float().mean())}
    return out, stats
