# Copyright (c) det_ext authors.
"""Detectron2 ``DatasetEvaluator`` for LVIS-format datasets, on det_ext's exact LVIS evaluation.

Compared with Detectron2's ``LVISEvaluator`` it needs no ``lvis`` package, keeps predictions as
compact arrays (rank 0 gathers about 40 bytes per box instead of a Python dict), honours
``max_dets_per_image`` and an optional per-category cap (Fixed AP), reports APr/APc/APf, AP per
training-count bin and per-category AP, and returns the metrics on every rank.
"""
from __future__ import annotations

import copy
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_utils
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation.evaluator import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from .detections import Detections
from .ground_truth import GroundTruth, load_ground_truth
from .lvis_eval import evaluate_lvis
from .results import (BinsSpec, bins_table, parse_bins, per_category_table, to_percent,
                      write_json)

__all__ = ["LVISStyleEvaluator"]

_PER_CATEGORY_LOG_LIMIT = 300  # longer per-category tables go to DEBUG (always in the JSON file)


class LVISStyleEvaluator(DatasetEvaluator):
    """Evaluates instance detection / segmentation on an LVIS-format dataset (LVIS, COCO-LT,
    LT-Shapes) with the LVIS API's federated semantics.

    Args:
        dataset_name (str): a registered dataset whose metadata has ``json_file`` (LVIS-format
            ground truth; polygon or RLE masks).
        tasks (tuple[str] or None): "bbox" and/or "segm"; None: bbox, plus segm when the
            predictions have masks.
        distributed (bool): gather predictions from all ranks to rank 0 before evaluating.
        output_dir (str or None): where to write ``lvis_style_results_{task}.json`` (metrics,
            bins, per-category AP) and ``lvis_instances_results.json`` (the results).
        max_dets_per_image (int or None): results kept per image (None: 300, the LVIS default;
            -1: no limit).
        max_dets_per_cat (int or None): results kept per category over the dataset (Fixed AP:
            10000 with ``max_dets_per_image=-1``).
        instance_count_bins: training instance-count bins for ``AP1``, ``AP2``, ... (see
            :func:`~det_ext.evaluation.results.parse_bins`; default LVIS bins
            [0, 10), [10, 100), [100, 1000), [1000, inf)).

    ``evaluate()`` returns ``{"bbox": {...}, "segm": {...}}`` in percent with keys ``AP, AP50,
    AP75, APs, APm, APl, APr, APc, APf, AR@300, ARs@300, ARm@300, ARl@300, AP1, ...``. A value
    that is undefined (e.g. APr when no rare category has ground truth, or a bin without
    categories; -1 in the LVIS API) is NaN, as in Detectron2's ``COCOEvaluator``.
    """

    def __init__(self, dataset_name: str, tasks: Optional[Sequence[str]] = None,
                 distributed: bool = True, output_dir: Optional[str] = None, *,
                 max_dets_per_image: Optional[int] = None, max_dets_per_cat: Optional[int] = None,
                 instance_count_bins: BinsSpec = None) -> None:
        self._logger = logging.getLogger(__name__)
        if isinstance(tasks, CfgNode):
            self._logger.warning("LVISStyleEvaluator got a config as `tasks`; inferring tasks "
                                 "from the predictions instead")
            tasks = None
        self._tasks = tuple(tasks) if tasks else None
        self._distributed = distributed
        self._output_dir = output_dir
        self._max_dets = 300 if max_dets_per_image is None else int(max_dets_per_image)
        self._max_dets_per_cat = max_dets_per_cat
        self._bins = parse_bins(instance_count_bins)
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        self._json_file = PathManager.get_local_path(self._metadata.json_file)
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
        if id_map:
            lut = np.zeros(max(id_map.values()) + 1, dtype=np.int64)
            for dataset_id, contiguous in id_map.items():
                lut[contiguous] = dataset_id
            self._class_to_id = lut
        else:
            self._class_to_id = None  # LVIS convention: category id = class index + 1
        self._gt: Optional[GroundTruth] = None
        self._predictions: List[Dict[str, Any]] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Stores each image's predictions as arrays.

        Args:
            inputs (list[dict]): model inputs, each with ``image_id``.
            outputs (list[dict]): model outputs, each with ``instances`` (``pred_boxes`` XYXY
                [R, 4], ``scores`` [R], ``pred_classes`` [R], optional ``pred_masks`` [R, H, W]).
        """
        for inp, out in zip(inputs, outputs):
            if "instances" not in out:
                continue
            inst = out["instances"].to(torch.device("cpu"))
            boxes = BoxMode.convert(inst.pred_boxes.tensor.numpy(), BoxMode.XYXY_ABS,
                                    BoxMode.XYWH_ABS)
            rec = {"image_id": inp["image_id"], "boxes": np.asarray(boxes, dtype=np.float32),
                   "scores": inst.scores.numpy().astype(np.float32),
                   "classes": inst.pred_classes.numpy().astype(np.int32)}
            if inst.has("pred_masks"):
                rles = [mask_utils.encode(np.array(m[:, :, None], order="F", dtype="uint8"))[0]
                        for m in inst.pred_masks.numpy()]
                for r in rles:
                    r["counts"] = r["counts"].decode("utf-8")
                rec["rles"] = rles
            self._predictions.append(rec)

    def _category_ids(self, classes: np.ndarray) -> np.ndarray:
        if self._class_to_id is None:
            return classes.astype(np.int64) + 1
        return self._class_to_id[classes]

    def _detections(self, preds: List[Dict[str, Any]], task: str) -> Detections:
        n = [len(p["scores"]) for p in preds]
        img = np.repeat(np.array([p["image_id"] for p in preds], dtype=np.int64), n)
        cls = np.concatenate([p["classes"] for p in preds]) if preds else np.zeros(0, np.int32)
        scores = np.concatenate([p["scores"] for p in preds]) if preds else np.zeros(0)
        if task == "segm":  # segmentation only: mask areas, as Detectron2 evaluates segm
            segs = list(itertools.chain.from_iterable(p.get("rles", []) for p in preds))
            return Detections.from_arrays(img, self._category_ids(cls), scores, None, segs,
                                          source=self._dataset_name)
        boxes = np.concatenate([p["boxes"] for p in preds]) if preds else np.zeros((0, 4))
        return Detections.from_arrays(img, self._category_ids(cls), scores, boxes,
                                      source=self._dataset_name)

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        """Gathers predictions to rank 0, evaluates there, and returns the metrics on all ranks.

        Returns:
            OrderedDict: task -> {metric: value in percent}; empty if nothing was processed or
            the ground truth has no annotations.
        """
        if self._distributed and comm.get_world_size() > 1:
            comm.synchronize()
            gathered = comm.gather(self._predictions, dst=0)
            preds = list(itertools.chain(*gathered)) if comm.is_main_process() else []
            outcome: Any = None
            if comm.is_main_process():
                try:
                    outcome = ("ok", self._evaluate_predictions(preds))
                except Exception as e:  # re-raised on every rank below, so none waits forever
                    outcome = ("error", f"{type(e).__name__}: {e}")
            outcome = comm.all_gather(outcome)[0]
            if outcome[0] == "error":
                raise RuntimeError(f"LVISStyleEvaluator failed on rank 0: {outcome[1]}")
            return copy.deepcopy(outcome[1])
        return self._evaluate_predictions(self._predictions)

    def _evaluate_predictions(self, preds: List[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
        if not preds:
            self._logger.warning("[LVISStyleEvaluator] Did not receive valid predictions.")
            return OrderedDict()
        if self._gt is None:
            self._gt = load_ground_truth(self._json_file)
        tasks = self._tasks or (("bbox", "segm") if any("rles" in p for p in preds)
                                else ("bbox",))
        if self._output_dir:
            self._save_results(preds)
        if len(self._gt.anns) == 0:
            self._logger.info("Annotations are not available for evaluation.")
            return OrderedDict()
        results: Dict[str, Dict[str, float]] = OrderedDict()
        for task in tasks:
            if task == "segm" and not all("rles" in p for p in preds):
                self._logger.warning("No mask predictions: skipping segm evaluation.")
                continue
            results[task] = self._evaluate_task(preds, task)
        return results

    def _evaluate_task(self, preds: List[Dict[str, Any]], task: str) -> Dict[str, float]:
        dets = self._detections(preds, task)
        self._logger.info("Evaluating %d %s results (max %s per image%s) ...", len(dets), task,
                          self._max_dets if self._max_dets >= 0 else "all",
                          f", {self._max_dets_per_cat} per category"
                          if self._max_dets_per_cat is not None else "")
        res = evaluate_lvis(self._gt, dets, task, max_dets=self._max_dets,
                            max_dets_per_cat=self._max_dets_per_cat, bins=self._bins)
        metrics = OrderedDict((k, to_percent(v)) for k, v in res.items() if isinstance(v, float))
        for b in res["bins"]:
            metrics[b["name"]] = to_percent(b["AP"])
        self._logger.info("Evaluation results for %s:\n%s", task, create_small_table(metrics))
        self._logger.info("AP by training instance count (%s):\n%s", task,
                          bins_table(res["bins"]))
        level = logging.INFO if len(res["per_category"]) <= _PER_CATEGORY_LOG_LIMIT \
            else logging.DEBUG
        self._logger.log(level, "Per-category %s AP:\n%s", task,
                         per_category_table(res["per_category"]))
        if self._output_dir:
            path = os.path.join(self._output_dir, f"lvis_style_results_{task}.json")
            write_json(path, {"task": task, "dataset": self._dataset_name, **res})
            self._logger.info("Per-category results written to %s", path)
        return metrics

    def _save_results(self, preds: List[Dict[str, Any]]) -> None:
        """Writes all results as LVIS-format JSON (as Detectron2's LVISEvaluator), per image."""
        PathManager.mkdirs(self._output_dir)
        path = os.path.join(self._output_dir, "lvis_instances_results.json")
        with PathManager.open(path, "w") as f:
            f.write("[")
            sep = ""
            for p in preds:
                cats = self._category_ids(p["classes"]).tolist()
                boxes, scores, rles = p["boxes"].tolist(), p["scores"].tolist(), p.get("rles")
                items = [{"image_id": p["image_id"], "category_id": c, "bbox": b, "score": s}
                         for c, b, s in zip(cats, boxes, scores)]
                if rles is not None:
                    for r, rle in zip(items, rles):
                        r["segmentation"] = rle
                if items:
                    f.write(sep + json.dumps(items)[1:-1])
                    sep = ","
            f.write("]")
        self._logger.info("Saved results to %s", path)
