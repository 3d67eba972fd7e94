# Copyright (c) det_ext authors.
"""Training on noisy datasets: a mapper that carries the clean annotations (for scoring only) and
the ``NoisyTrainer`` (``DET_EXT.TRAINER: "NoisyTrainer"``) that uses it."""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import torch
from detectron2.data import DatasetMapper, build_detection_train_loader
from detectron2.structures import Boxes, BoxMode

from det_ext.engine.trainer import TRAINER_REGISTRY, DetExtTrainer

__all__ = ["NoisyDatasetMapper", "NoisyTrainer"]


class NoisyDatasetMapper(DatasetMapper):
    """``DatasetMapper`` that also transforms each annotation's ``clean_bbox`` (XYWH) and puts
    the clean boxes and labels into ``instances.gt_clean_boxes`` / ``gt_clean_classes`` (and the
    annotation ids into ``gt_ann_ids``).

    The clean annotations are used only to score the correction (logged metrics), never for
    training. They are attached only when every annotation has them and no instance was dropped.
    """

    def _transform_annotations(self, dataset_dict: Dict[str, Any], transforms, image_shape):
        annos: List[Dict[str, Any]] = [a for a in dataset_dict.get("annotations", [])
                                       if a.get("iscrowd", 0) == 0]
        has_clean = bool(annos) and all("clean_bbox" in a and "clean_category_id" in a
                                        for a in annos)
        if has_clean:
            clean = np.array([BoxMode.convert(list(a["clean_bbox"]), BoxMode.XYWH_ABS,
                                              BoxMode.XYXY_ABS) for a in annos], dtype=np.float64)
            clean = transforms.apply_box(clean)
            h, w = image_shape
            clean = np.clip(clean, 0, [w, h, w, h])
            labels = [int(a["clean_category_id"]) for a in annos]
        ids = [a.get("id") for a in annos]
        super()._transform_annotations(dataset_dict, transforms, image_shape)
        inst = dataset_dict["instances"]
        if annos and None not in ids and len(inst) == len(ids):
            inst.gt_ann_ids = torch.as_tensor(ids, dtype=torch.int64)
        if has_clean and len(inst) == len(labels):
            inst.gt_clean_boxes = Boxes(torch.as_tensor(clean, dtype=torch.float32))
            inst.gt_clean_classes = torch.as_tensor(labels, dtype=torch.int64)


@TRAINER_REGISTRY.register()
class NoisyTrainer(DetExtTrainer):
    """``DetExtTrainer`` whose training loader keeps the clean annotations of noisy datasets."""

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=NoisyDatasetMapper(cfg, True))

