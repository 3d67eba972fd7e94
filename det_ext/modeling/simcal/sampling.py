# Copyright (c) det_ext authors.
"""Proposal level of SimCal's bi-level sampling.

For each image of a calibration batch: proposals from the frozen RPN plus the ground-truth boxes
are labelled at IoU 0.5 and randomly subsampled (reference: 512 RoIs, 25% positives). The batch is
then composed: only positives of the class sampled for that image are kept, and negatives pooled
over the whole batch are subsampled to the number of kept positives (fg:bg = 1:1).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from detectron2.layers import nonzero_tuple
from detectron2.modeling.proposal_generator import RPN
from detectron2.modeling.proposal_generator.proposal_utils import (
    add_ground_truth_to_proposals,
    find_top_rpn_proposals,
)
from detectron2.modeling.sampling import subsample_labels
from detectron2.structures import Boxes, ImageList, Instances, pairwise_iou

__all__ = ["frozen_rpn_proposals", "label_proposals", "compose_calibration_batch"]


@torch.no_grad()
def frozen_rpn_proposals(rpn: torch.nn.Module, images: ImageList,
                         features: dict, use_train_topk: bool = True) -> List[Instances]:
    """Proposals of a frozen (eval-mode) RPN, optionally with its training-time top-k.

    Args:
        rpn: the detector's proposal generator (a Detectron2 ``RPN``; other generators are run
            as they are, in eval mode).
        images (ImageList): the batch, N images.
        features (dict[str, Tensor]): backbone features.
        use_train_topk (bool): keep ``PRE/POST_NMS_TOPK_TRAIN`` proposals instead of the test ones.

    Returns:
        list[Instances]: N items with ``proposal_boxes`` and ``objectness_logits``.
    """
    if not isinstance(rpn, RPN) or not use_train_topk:
        return rpn(images, features, None)[0]
    feats = [features[f] for f in rpn.in_features]
    anchors = rpn.anchor_generator(feats)
    logits, deltas = rpn.rpn_head(feats)
    logits = [s.permute(0, 2, 3, 1).flatten(1) for s in logits]  # (N, Hi*Wi*A)
    box_dim = rpn.anchor_generator.box_dim
    deltas = [  # (N, A*B, Hi, Wi) -> (N, Hi*Wi*A, B)
        x.view(x.shape[0], -1, box_dim, x.shape[-2], x.shape[-1])
        .permute(0, 3, 4, 1, 2).flatten(1, -2)
        for x in deltas
    ]
    boxes = rpn._decode_proposals(anchors, deltas)
    return find_top_rpn_proposals(boxes, logits, images.image_sizes, rpn.nms_thresh,
                                  rpn.pre_nms_topk[True], rpn.post_nms_topk[True],
                                  rpn.min_box_size, False)


@torch.no_grad()
def label_proposals(proposals: List[Instances], targets: List[Instances], num_classes: int,
                    iou_threshold: float = 0.5, batch_size_per_image: int = 512,
                    positive_fraction: float = 0.25,
                    add_gt: bool = True) -> List[Tuple[Boxes, torch.Tensor]]:
    """Labels proposals by max IoU with the ground truth and subsamples them per image.

    Args:
        proposals (list[Instances]): per image, ``proposal_boxes``.
        targets (list[Instances]): per image, ``gt_boxes`` and ``gt_classes`` (0..C-1).
        num_classes (int): C; background is labelled C.
        iou_threshold (float): IoU >= threshold -> class of the best ground truth, else background.
        batch_size_per_image (int): RoIs kept per image after subsampling.
        positive_fraction (float): target fraction of positives among them.
        add_gt (bool): add the ground-truth boxes as proposals first.

    Returns:
        list[(Boxes, Tensor)]: per image, the R_i kept boxes and their int64 labels (R_i,).
    """
    if add_gt:
        proposals = add_ground_truth_to_proposals(targets, proposals)
    out = []
    for props, tgt in zip(proposals, targets):
        boxes = props.proposal_boxes
        labels = torch.full((len(boxes),), num_classes, dtype=torch.int64, device=boxes.device)
        if len(tgt) > 0:
            iou = pairwise_iou(tgt.gt_boxes, boxes)  # (G, R)
            best_iou, best_gt = iou.max(dim=0)
            fg = best_iou >= iou_threshold
            labels[fg] = tgt.gt_classes[best_gt[fg]]
        pos, neg = subsample_labels(labels, batch_size_per_image, positive_fraction, num_classes)
        keep = torch.cat([pos, neg])
        out.append((boxes[keep], labels[keep]))
    return out


def compose_calibration_batch(labels_per_image: Sequence[torch.Tensor],
                              sampled_classes: Sequence[int], num_classes: int,
                              negative_ratio: float = 1.0,
                              generator: torch.Generator | None = None) -> List[torch.Tensor]:
    """Chooses the RoIs of a calibration batch (indexed per image, whatever the images per class).

    Args:
        labels_per_image (list[Tensor]): int64 (R_i,) labels of each image's RoIs; C = background.
        sampled_classes (list[int]): the class sampled for each image.
        num_classes (int): C.
        negative_ratio (float): background RoIs kept per kept positive, drawn uniformly without
            replacement from the negatives of all images together.
        generator (torch.Generator or None): random source of the negative subsampling.

    Returns:
        list[Tensor]: per image, int64 indices into that image's RoIs to keep.
    """
    if len(labels_per_image) != len(sampled_classes):
        raise ValueError(f"{len(labels_per_image)} images but {len(sampled_classes)} "
                         "sampled classes")
    pos_idx, neg_img, neg_idx = [], [], []
    for i, (labels, cls) in enumerate(zip(labels_per_image, sampled_classes)):
        pos_idx.append(nonzero_tuple(labels == int(cls))[0])
        neg = nonzero_tuple(labels == num_classes)[0]
        neg_idx.append(neg)
        neg_img.append(torch.full_like(neg, i))
    num_pos = sum(len(p) for p in pos_idx)
    all_neg_idx, all_neg_img = torch.cat(neg_idx), torch.cat(neg_img)
    num_neg = min(int(round(negative_ratio * num_pos)), len(all_neg_idx))
    perm = torch.randperm(len(all_neg_idx), generator=generator)[:num_neg].to(all_neg_idx.device)
    chosen_idx, chosen_img = all_neg_idx[perm], all_neg_img[perm]
    return [torch.cat([p, chosen_idx[chosen_img == i]]) for i, p in enumerate(pos_idx)]
