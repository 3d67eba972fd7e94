# Copyright (c) det_ext authors.
"""Correcting a whole dataset with a trained dual-head model (``tools/correct_annotations.py``).

Each image is resized as at test time; the model computes its features once and runs both
correction steps on the image's annotated boxes. The result is a copy of the dataset's JSON with the
corrected boxes (mapped back to the original resolution) and labels; the noisy ones are kept in
``noisy_bbox`` / ``noisy_category_id``. The report counts the changes and, when the annotations
carry ``clean_bbox`` / ``clean_category_id``, scores both the noisy and the corrected annotations.
"""
from __future__ import annotations

import copy
import logging
import time
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from det_ext.data.datasets import read_dataset_json
from det_ext.data.noise import box_iou_xywh
from det_ext.utils.errors import DetExtInputError

from .trainer import NoisyDatasetMapper

__all__ = ["correct_dataset", "CorrectionReport"]

logger = logging.getLogger(__name__)

CorrectionReport = Dict[str, Any]


def _correct_batch(model: torch.nn.Module, inputs: List[Dict[str, Any]]
                   ) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(ids (n,), corrected XYXY boxes in input resolution (n, 4), soft labels (n, K)) per image."""
    images = model.preprocess_image(inputs)
    with torch.no_grad():
        features = model.backbone(images.tensor)
    targets = [x["instances"].to(model.device) for x in inputs]
    corrected, _ = model.roi_heads.correct(features, targets, model.proposal_generator)
    return [(t.gt_ann_ids.cpu().numpy(), c.gt_boxes.tensor.cpu().numpy(),
             c.gt_soft_classes.cpu().numpy()) for t, c in zip(targets, corrected)]


def correct_dataset(cfg: CfgNode, model: torch.nn.Module, dataset_name: str,
                    batch_size: int = 8) -> Tuple[Dict[str, Any], CorrectionReport]:
    """Runs the model's box and label correction over every image of a registered dataset.

    Args:
        cfg (CfgNode): the model's config (test-time input size, pixel format).
        model (nn.Module): a trained model with :class:`DualHeadROIHeads` (``roi_heads.correct``).
        dataset_name (str): a registered dataset with a JSON file (``json_file`` metadata) whose
            annotations have ids.
        batch_size (int): images per forward pass.

    Returns:
        tuple: the corrected dataset (COCO/LVIS dict) and the report.

    Raises:
        DetExtInputError: a model without dual heads, or a dataset without JSON or annotation ids.
    """
    if not hasattr(model.roi_heads, "correct"):
        raise DetExtInputError(f"MODEL.ROI_HEADS.NAME: {type(model.roi_heads).__name__} has no "
                               "correction; use a DualHeadROIHeads model")
    dicts = DatasetCatalog.get(dataset_name)  # also completes the metadata of plain JSON datasets
    meta = MetadataCatalog.get(dataset_name)
    json_file = meta.get("json_file")
    if not json_file:
        raise DetExtInputError(f"dataset '{dataset_name}' has no json_file to correct")
    data = read_dataset_json(json_file)
    contiguous_to_id = {v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()}
    mapper = NoisyDatasetMapper(
        cfg, True, augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST,
                                                       cfg.INPUT.MAX_SIZE_TEST, "choice")],
        use_instance_mask=False)
    model.eval()
    results: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
    todo = [d for d in dicts if any(not a.get("iscrowd", 0) for a in d["annotations"])]
    start = time.perf_counter()
    for i in range(0, len(todo), batch_size):
        batch = [mapper(copy.deepcopy(d)) for d in todo[i:i + batch_size]]
        for inp in batch:
            if not inp["instances"].has("gt_ann_ids"):
                raise DetExtInputError(f"{json_file}: image {inp['image_id']} has annotations "
                                       "without 'id'")
        for inp, (ids, boxes, soft) in zip(batch, _correct_batch(model, batch)):
            h, w = inp["image"].shape[-2:]
            scale = np.array([inp["width"] / w, inp["height"] / h] * 2)
            for ann_id, box, prob in zip(ids, boxes * scale, soft):
                results[int(ann_id)] = (box, prob)
        done = min(i + batch_size, len(todo))
        if done == len(todo) or (i // batch_size) % 20 == 0:
            rate = (time.perf_counter() - start) / done
            logger.info("Corrected %d/%d images, ETA %.0f s", done, len(todo),
                        rate * (len(todo) - done))
    out = copy.deepcopy(data)
    noisy_boxes, new_boxes, clean_boxes = [], [], []
    noisy_labels, new_labels, clean_labels = [], [], []
    for ann in out["annotations"]:
        if ann.get("id") not in results:
            continue
        box, prob = results[ann["id"]]
        xywh = BoxMode.convert(box.tolist(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
        ann["noisy_bbox"], ann["noisy_category_id"] = ann["bbox"], ann["category_id"]
        ann["bbox"] = [round(float(v), 2) for v in xywh]
        ann["category_id"] = contiguous_to_id[int(prob.argmax())]
        ann["correction_confidence"] = round(float(prob.max()), 4)
        ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
        noisy_boxes.append(ann["noisy_bbox"])
        new_boxes.append(ann["bbox"])
        noisy_labels.append(ann["noisy_category_id"])
        new_labels.append(ann["category_id"])
        if "clean_bbox" in ann:
            clean_boxes.append(ann["clean_bbox"])
            clean_labels.append(ann["clean_category_id"])
    report = _report(noisy_boxes, new_boxes, noisy_labels, new_labels, clean_boxes, clean_labels)
    report["dataset"] = dataset_name
    out["correction"] = {k: v for k, v in report.items()}
    return out, report


def _report(noisy_boxes, new_boxes, noisy_labels, new_labels, clean_boxes, clean_labels
            ) -> CorrectionReport:
    n = len(new_boxes)
    noisy_b, new_b = np.asarray(noisy_boxes).reshape(-1, 4), np.asarray(new_boxes).reshape(-1, 4)
    noisy_l, new_l = np.asarray(noisy_labels), np.asarray(new_labels)
    moved = box_iou_xywh(noisy_b, new_b) if n else np.zeros(0)
    report: CorrectionReport = {
        "num_annotations": n,
        "labels_changed": int((noisy_l != new_l).sum()),
        # A box counts as changed when its IoU with the noisy box drops below 0.95.
        "boxes_changed": int((moved < 0.95).sum()),
        "mean_iou_noisy_vs_corrected": float(moved.mean()) if n else float("nan"),
    }
    if n and len(clean_boxes) == n:
        clean_b, clean_l = np.asarray(clean_boxes).reshape(-1, 4), np.asarray(clean_labels)
        report.update({
            "noisy_mean_iou": float(box_iou_xywh(noisy_b, clean_b).mean()),
            "corrected_mean_iou": float(box_iou_xywh(new_b, clean_b).mean()),
            "noisy_label_accuracy": float((noisy_l == clean_l).mean()),
            "corrected_label_accuracy": float((new_l == clean_l).mean()),
        })
    return report
