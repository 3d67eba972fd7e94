# Copyright (c) det_ext authors.
"""Fast, exact LVIS-style and COCO-style evaluation, independent of the ``lvis`` package.

- :func:`evaluate_lvis`: federated LVIS evaluation with the LVIS API's exact results (AP, AP50,
  AP75, APs/m/l, APr/c/f, AR@300 and its splits), plus AP per training-count bin and per
  category; optional per-category cap (Fixed AP).
- :func:`evaluate_coco`: equivalent to pycocotools' ``COCOeval`` (``stats`` and per category).
- :class:`LVISStyleEvaluator`: the Detectron2 ``DatasetEvaluator`` using it (imported on first
  use, so that the evaluation functions need neither torch nor detectron2).
- :data:`COCO_LT_BINS`, :data:`LVIS_BINS`: training instance-count bin presets.
"""
from typing import Any

from .coco_eval import COCOStyleEval, evaluate_coco
from .detections import Detections
from .ground_truth import EvaluationInputError, GroundTruth, load_ground_truth
from .lvis_eval import LVISStyleEval, evaluate_lvis
from .results import BIN_PRESETS, COCO_LT_BINS, LVIS_BINS, parse_bins

__all__ = [
    "LVISStyleEvaluator", "evaluate_lvis", "evaluate_coco", "LVISStyleEval", "COCOStyleEval",
    "Detections", "GroundTruth", "load_ground_truth", "EvaluationInputError", "COCO_LT_BINS",
    "LVIS_BINS", "BIN_PRESETS", "parse_bins",
]


def __getattr__(name: str) -> Any:
    if name == "LVISStyleEvaluator":
        from .d2_evaluator import LVISStyleEvaluator

        return LVISStyleEvaluator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
