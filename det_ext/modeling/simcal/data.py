# Copyright (c) det_ext authors.
"""Image level of SimCal's bi-level sampling: a class-balanced episodic stream of images.

Each step draws ``classes_per_batch`` classes uniformly among the classes with training instances
(with or without replacement), then ``images_per_class`` images containing each class (with
replacement). Every yielded dataset dict carries ``"simcal_class"``, the class it was drawn for.
"""
from __future__ import annotations

import logging
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetFromList, DatasetMapper, build_detection_train_loader
from detectron2.data import get_detection_dataset_dicts
from detectron2.utils import comm

from det_ext.utils.errors import ConfigInputError

__all__ = ["BiLevelClassBalancedDataset", "class_to_image_index", "build_simcal_train_loader"]

logger = logging.getLogger(__name__)


def class_to_image_index(dataset_dicts: Sequence[dict], num_classes: int) -> List[np.ndarray]:
    """For each class, the indices of the images that contain at least one (non-crowd) instance."""
    index: List[list] = [[] for _ in range(num_classes)]
    for i, d in enumerate(dataset_dicts):
        anns = d.get("annotations", [])
        for c in sorted({a["category_id"] for a in anns if not a.get("iscrowd", 0)}):
            if not 0 <= c < num_classes:
                raise ValueError(f"image {d.get('image_id', i)}: category_id {c} outside "
                                 f"0..{num_classes - 1}")
            index[c].append(i)
    return [np.asarray(x, dtype=np.int64) for x in index]


class BiLevelClassBalancedDataset(torch.utils.data.IterableDataset):
    """Infinite stream of dataset dicts in steps of ``classes_per_batch * images_per_class``.

    Args:
        dataset_dicts (list[dict]): Detectron2 dataset dicts (contiguous ``category_id``).
        num_classes (int): C.
        classes_per_batch (int): classes drawn per step (on this process).
        images_per_class (int): images drawn per sampled class.
        seed (int): random seed; combined with the process rank and the data-loader worker id.
        with_replacement (bool): draw the classes of one step with replacement (reference).
    """

    def __init__(self, dataset_dicts: Sequence[dict], num_classes: int, classes_per_batch: int,
                 images_per_class: int, seed: int = 0, with_replacement: bool = True):
        super().__init__()
        self.class_images = class_to_image_index(dataset_dicts, num_classes)
        self.candidates = np.asarray([c for c, imgs in enumerate(self.class_images) if len(imgs)],
                                     dtype=np.int64)
        if len(self.candidates) == 0:
            raise ValueError("no class has a training instance")
        if not with_replacement and classes_per_batch > len(self.candidates):
            raise ConfigInputError(
                f"SIMCAL.CLASSES_PER_BATCH: {classes_per_batch} classes per step without "
                f"replacement, but only {len(self.candidates)} classes have training instances")
        self.dicts = DatasetFromList(list(dataset_dicts), copy=False, serialize=True)
        self.classes_per_batch = classes_per_batch
        self.images_per_class = images_per_class
        self.seed = int(seed)
        self.with_replacement = with_replacement
        self.rank = comm.get_rank()
        # Set by the trainer on resume (before the loader starts): a resumed run draws new steps
        # instead of repeating the ones it already trained on.
        self.start_step = 0

    def episodes(self, rng: np.random.Generator) -> Iterator[List[tuple]]:
        """Infinite steps, each a list of (class, image index) pairs, class-major."""
        while True:
            classes = rng.choice(self.candidates, size=self.classes_per_batch,
                                 replace=self.with_replacement)
            step = []
            for c in classes:
                imgs = self.class_images[int(c)]
                picks = rng.integers(0, len(imgs), self.images_per_class)
                step += [(int(c), int(imgs[j])) for j in picks]
            yield step

    def __iter__(self) -> Iterator[Dict]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, self.rank, worker, self.start_step])
        for step in self.episodes(rng):
            for cls, idx in step:
                d = dict(self.dicts[idx])
                d["simcal_class"] = cls
                yield d


def build_simcal_train_loader(cfg: CfgNode, mapper: Optional[DatasetMapper] = None,
                              seed: Optional[int] = None):
    """The calibration-stage loader: bi-level class-balanced batches of ``SIMCAL.IMS_PER_BATCH``.

    Each process gets ``IMS_PER_BATCH / world_size`` images from ``CLASSES_PER_BATCH / world_size``
    classes per step; data-loader workers produce whole steps, so every batch is one step.
    """
    world = comm.get_world_size()
    ims, ncls = cfg.SIMCAL.IMS_PER_BATCH, cfg.SIMCAL.CLASSES_PER_BATCH
    if ims % world or ncls % world:
        raise ConfigInputError(f"SIMCAL.IMS_PER_BATCH ({ims}) and SIMCAL.CLASSES_PER_BATCH "
                               f"({ncls}) "
                               f"must be divisible by the number of processes ({world})")
    if ncls <= 0 or (ims // world) % (ncls // world):
        raise ConfigInputError(f"SIMCAL.IMS_PER_BATCH ({ims}) must be a multiple of "
                               f"SIMCAL.CLASSES_PER_BATCH ({ncls}) on every process")
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=True)
    seed = cfg.SEED if seed is None else seed
    if seed is None or seed < 0:
        seed = int(np.random.SeedSequence().entropy % (2**31))
    dataset = BiLevelClassBalancedDataset(
        dicts, cfg.MODEL.ROI_HEADS.NUM_CLASSES, ncls // world, ims // ncls, seed,
        cfg.SIMCAL.CLASS_SAMPLING_WITH_REPLACEMENT)
    logger.info("SimCal bi-level sampler: %d candidate classes, %d classes x %d images per step",
                len(dataset.candidates), ncls, ims // ncls)
    if mapper is None:  # the calibration head needs boxes and classes only: skip mask decoding
        kwargs = DatasetMapper.from_config(cfg, True)
        mapper = DatasetMapper(**{**kwargs, "use_instance_mask": False})
    loader = build_detection_train_loader(
        dataset=dataset, mapper=mapper, sampler=None,
        total_batch_size=ims, aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS)
    loader.simcal_dataset = dataset  # lets the trainer set ``start_step`` when resuming
    return loader
