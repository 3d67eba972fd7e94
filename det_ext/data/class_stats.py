# Copyright (c) det_ext authors.
"""Per-class training statistics (instance and image counts, LVIS frequency groups).

Long-tail components (SimCal's dual rule, frequency bins, samplers) read class frequencies from
dataset metadata, never from hard-coded tables. Metadata written by det_ext's loaders already holds
them; for other datasets (e.g. Detectron2's builtin LVIS) they are computed once from the dataset
dicts and cached in the metadata.
"""
from __future__ import annotations

import dataclasses
from typing import List, Sequence, Union

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from det_ext.data.lt_shapes.generator import frequency_group

__all__ = ["ClassStatistics", "get_class_statistics", "class_statistics_from_dicts"]


@dataclasses.dataclass
class ClassStatistics:
    """Training statistics of C classes, indexed by contiguous class id.

    Attributes:
        instance_counts (np.ndarray): int64 (C,), training instances per class.
        image_counts (np.ndarray): int64 (C,), training images containing the class.
        frequency (list[str]): LVIS group per class: 'r' (<= 10 images), 'c' (11..100), 'f' (> 100).
    """

    instance_counts: np.ndarray
    image_counts: np.ndarray
    frequency: List[str]

    @property
    def num_classes(self) -> int:
        return len(self.instance_counts)


def class_statistics_from_dicts(dicts: Sequence[dict], num_classes: int) -> ClassStatistics:
    """Counts instances and images per class in Detectron2 dataset dicts (crowd boxes excluded)."""
    inst = np.zeros(num_classes, dtype=np.int64)
    imgs = np.zeros(num_classes, dtype=np.int64)
    for d in dicts:
        labels = [a["category_id"] for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
        if labels:
            np.add.at(inst, labels, 1)
            imgs[np.unique(labels)] += 1
    return ClassStatistics(inst, imgs, [frequency_group(int(n)) for n in imgs])


def _one_dataset(name: str) -> ClassStatistics:
    meta = MetadataCatalog.get(name)
    if meta.get("lt_shapes_spec") is not None:
        from det_ext.data.datasets.lt_shapes import ensure_lt_shapes_generated

        ensure_lt_shapes_generated(name)
    if meta.get("class_instance_count") is not None and meta.get("class_image_count") is not None:
        inst = np.asarray(meta.class_instance_count, dtype=np.int64)
        imgs = np.asarray([c["image_count"] for c in meta.class_image_count], dtype=np.int64)
        freq = meta.get("class_frequency") or [frequency_group(int(n)) for n in imgs]
        return ClassStatistics(inst, imgs, list(freq))
    stats = class_statistics_from_dicts(DatasetCatalog.get(name), len(meta.thing_classes))
    meta.set(
        class_instance_count=stats.instance_counts.tolist(),
        class_frequency=stats.frequency,
        **({} if meta.get("class_image_count") is not None else {"class_image_count": [
            {"id": i + 1, "image_count": int(n)} for i, n in enumerate(stats.image_counts)]}),
    )
    return stats


def get_class_statistics(dataset_names: Union[str, Sequence[str]]) -> ClassStatistics:
    """Training statistics of one dataset, or summed over several with the same classes.

    Args:
        dataset_names (str or Sequence[str]): registered training dataset name(s).

    Returns:
        ClassStatistics: counts per contiguous class id.
    """
    names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
    if not names:
        raise ValueError("get_class_statistics needs at least one dataset name")
    parts = [_one_dataset(n) for n in names]
    if len({p.num_classes for p in parts}) != 1:
        raise ValueError(f"datasets {names} have different numbers of classes")
    inst = sum(p.instance_counts for p in parts)
    imgs = sum(p.image_counts for p in parts)
    freq = parts[0].frequency if len(parts) == 1 else [frequency_group(int(n)) for n in imgs]
    return ClassStatistics(inst, imgs, freq)
