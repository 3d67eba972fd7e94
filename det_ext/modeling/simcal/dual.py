# Copyright (c) det_ext authors.
"""SimCal's dual-head score rule and the low-shot class set it uses."""
from __future__ import annotations

import logging
from typing import Sequence, Union

import numpy as np
import torch

__all__ = ["INFERENCE_MODES", "combine_scores", "resolve_dual_threshold", "low_shot_classes"]

logger = logging.getLogger(__name__)

#: Test-time modes of the SimCal ROI heads.
INFERENCE_MODES = ("dual", "calibrated", "original")


def combine_scores(original: torch.Tensor, calibrated: torch.Tensor, low_shot: torch.Tensor,
                   mode: str = "dual") -> torch.Tensor:
    """Combines the two heads' class probabilities.

    Args:
        original (Tensor): (R, C+1) probabilities of the original head, background last.
        calibrated (Tensor): (R, C+1) probabilities of the calibration head, background last.
        low_shot (Tensor): bool (C,), the classes that take the calibrated score in "dual".
        mode (str): "dual": column replacement for the low-shot classes, background and the other
            classes from the original head, no renormalisation (as the reference); "calibrated":
            the calibration head's probabilities; "original": the original head's.

    Returns:
        Tensor: (R, C+1) scores.
    """
    if mode == "original":
        return original
    if mode == "calibrated":
        return calibrated
    if mode != "dual":
        raise ValueError(f"unknown SimCal inference mode '{mode}' (choose from {INFERENCE_MODES})")
    num_classes = original.shape[1] - 1
    if low_shot.shape != (num_classes,):
        raise ValueError(f"low-shot mask has shape {tuple(low_shot.shape)}, "
                         f"expected ({num_classes},)")
    column = torch.cat([low_shot.to(original.device, torch.bool),
                        low_shot.new_zeros(1, dtype=torch.bool).to(original.device)])
    return torch.where(column[None, :], calibrated, original)


def resolve_dual_threshold(threshold: int, dataset_names: Union[str, Sequence[str]],
                           counts: np.ndarray, frequency: Sequence[str]) -> int:
    """The dual rule's T.

    Args:
        threshold (int): ``SIMCAL.DUAL_THRESHOLD``; used as is when >= 0.
        dataset_names: the training dataset name(s).
        counts (np.ndarray): (C,) the per-class statistic the rule compares with T.
        frequency (list[str]): LVIS groups 'r'/'c'/'f' per class.

    Returns:
        int: T. For -1: 100 for LVIS, 400 for COCO-LT (the reference values), otherwise the
        smallest count among the frequent ('f') classes, i.e. every class whose count lies below
        all frequent classes is low-shot (all classes when none is frequent).
    """
    if threshold >= 0:
        return int(threshold)
    names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
    if names and all(n.startswith("lvis") for n in names):
        return 100
    if names and all(n.startswith("coco_lt") for n in names):
        return 400
    freq_counts = [int(c) for c, f in zip(counts, frequency) if f == "f"]
    return min(freq_counts) if freq_counts else int(np.max(counts)) + 1


def low_shot_classes(dataset_names: Union[str, Sequence[str]], threshold: int = -1,
                     statistic: str = "instance_count") -> torch.Tensor:
    """The classes whose training statistic is below T, from the datasets' metadata.

    Args:
        dataset_names: registered training dataset name(s).
        threshold (int): T, or -1 for the default of :func:`resolve_dual_threshold`.
        statistic (str): "instance_count" (reference) or "image_count".

    Returns:
        Tensor: bool (C,), indexed by contiguous class id.
    """
    from det_ext.data import get_class_statistics
    from det_ext.utils.errors import ConfigInputError

    stats = get_class_statistics(dataset_names)
    if statistic == "instance_count":
        counts = stats.instance_counts
    elif statistic == "image_count":
        counts = stats.image_counts
    else:
        raise ConfigInputError(f"SIMCAL.DUAL_STATISTIC: unknown statistic '{statistic}' "
                               "(choose 'instance_count' or 'image_count')")
    t = resolve_dual_threshold(threshold, dataset_names, counts, stats.frequency)
    mask = torch.as_tensor(np.asarray(counts) < t)
    logger.info("SimCal dual rule: T=%d on %s -> %d of %d classes take the calibrated score",
                t, statistic, int(mask.sum()), len(mask))
    return mask
