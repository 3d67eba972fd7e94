# Copyright (c) det_ext authors.
"""Generalized open-vocabulary evaluation (novel / base / all AP50) and the open-vocabulary trainer.

Generalized setting: the detector scores every test class at once (base and novel classifiers
together, as in OVR-CNN / PB-OVD's ``coco_generalized_zeroshot_val``); AP is computed per category
over the whole test set and then averaged over the novel categories, the base categories and all
of them. The test dataset names its novel categories in its metadata (``novel_category_ids``,
dataset category ids), as registered by :mod:`det_ext.data.open_vocab`.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset, print_csv_format
from detectron2.utils import comm

from det_ext.evaluation import COCOStyleEval, LVISStyleEval, LVISStyleEvaluator, evaluate_coco
from det_ext.evaluation.ground_truth import GroundTruth, load_ground_truth

from .trainer import TRAINER_REGISTRY, DetExtTrainer, build_det_ext_evaluator, save_metrics

__all__ = ["split_ap", "OpenVocabEvaluator", "OpenVocabTrainer"]

logger = logging.getLogger(__name__)


def _mean_valid(p: np.ndarray) -> float:
    v = p[p > -1]
    return float(np.mean(v)) if v.size else -1.0


def split_ap(gt: Any, dt: Any, novel_ids: Iterable[int], iou_type: str = "bbox", *,
             style: str = "lvis", max_dets: Optional[int] = 300) -> Dict[str, float]:
    """AP50 and AP averaged over novel, base and all categories of one generalized result set.

    Args:
        gt: ground truth (file, dict or :class:`GroundTruth`) with every test category.
        dt: results on dataset category ids (file, list of dicts or ``Detections``).
        novel_ids (Iterable[int]): dataset category ids of the novel categories; the others are
            base.
        iou_type (str): "bbox" or "segm".
        style (str): "lvis" (federated, LVIS API semantics) or "coco" (pycocotools semantics,
            ``max_dets`` per image for the last limit).
        max_dets (int or None): results per image (LVIS: 300; COCO: 100).

    Returns:
        dict: ``novel_AP50, base_AP50, all_AP50, novel_AP, base_AP, all_AP`` as fractions
        (-1 when a group has no category with ground truth).
    """
    gt = gt if isinstance(gt, GroundTruth) else load_ground_truth(gt)
    novel = set(int(i) for i in novel_ids)
    ids = [int(c["id"]) for c in gt.categories]
    unknown = sorted(novel - set(ids))
    if unknown:
        raise ValueError(f"novel category ids {unknown[:5]} are not in the ground truth")
    if style == "lvis":
        ev = LVISStyleEval(gt, dt, iou_type, max_dets=max_dets).run()
        prec = ev.precision[..., 0]  # [T, R, K], area "all"
    elif style == "coco":
        ev = COCOStyleEval(gt, dt, iou_type, max_dets=(1, 10, max_dets or 100)).run()
        prec = ev.precision[..., 0, -1]  # area "all", last max-dets limit
    else:
        raise ValueError(f"style must be 'lvis' or 'coco', got {style!r}")
    groups = {"novel": np.array([i for i, c in enumerate(ids) if c in novel], dtype=np.int64),
              "base": np.array([i for i, c in enumerate(ids) if c not in novel], dtype=np.int64),
              "all": np.arange(len(ids))}
    out: Dict[str, float] = OrderedDict()
    for name, idx in groups.items():
        out[f"{name}_AP50"] = _mean_valid(prec[0][:, idx]) if idx.size else -1.0
    for name, idx in groups.items():
        out[f"{name}_AP"] = _mean_valid(prec[:, :, idx]) if idx.size else -1.0
    return out


class OpenVocabEvaluator(LVISStyleEvaluator):
    """:class:`LVISStyleEvaluator` that adds generalized novel / base / all AP50 and AP.

    Args:
        novel_ids (Sequence[int]): dataset category ids of the novel categories (default: the
            dataset metadata's ``novel_category_ids``).
        style (str): "lvis" (federated; LVIS, LT-Shapes) or "coco" (COCO OV split: COCO metrics).
        Other arguments: see :class:`LVISStyleEvaluator`.

    Returns (``evaluate``): per task the usual metrics plus ``novel_AP50, base_AP50, all_AP50,
    novel_AP, base_AP, all_AP`` in percent.
    """

    def __init__(self, dataset_name: str, *args: Any, novel_ids: Optional[Sequence[int]] = None,
                 style: str = "lvis", **kwargs: Any) -> None:
        super().__init__(dataset_name, *args, **kwargs)
        meta = MetadataCatalog.get(dataset_name)
        self._novel_ids = list(novel_ids if novel_ids is not None
                               else meta.get("novel_category_ids", []))
        self._style = style

    def _evaluate_task(self, preds: List[Dict[str, Any]], task: str) -> Dict[str, float]:
        if self._style == "coco":
            max_dets = self._max_dets if self._max_dets > 0 else 100
            res = evaluate_coco(self._gt, self._detections(preds, task), task,
                                max_dets=(1, 10, max_dets))
            metrics = OrderedDict((k, 100.0 * v if v >= 0 else float("nan"))
                                  for k, v in res.items() if isinstance(v, float))
        else:
            metrics = super()._evaluate_task(preds, task)
            max_dets = self._max_dets if self._max_dets >= 0 else None
        split = split_ap(self._gt, self._detections(preds, task), self._novel_ids, task,
                         style=self._style, max_dets=max_dets)
        for k, v in split.items():
            metrics[k] = 100.0 * v if v >= 0 else float("nan")
        logger.info("Generalized open-vocabulary %s results (%d novel categories): novel AP50 "
                    "%.2f, base AP50 %.2f, all AP50 %.2f", task, len(self._novel_ids),
                    metrics["novel_AP50"], metrics["base_AP50"], metrics["all_AP50"])
        return metrics


def build_open_vocab_evaluator(cfg: CfgNode, dataset_name: str,
                               output_folder: Optional[str] = None) -> DatasetEvaluator:
    """:class:`OpenVocabEvaluator` for datasets with ``novel_category_ids`` in their metadata,
    det_ext's default evaluator otherwise."""
    meta = MetadataCatalog.get(dataset_name)
    if meta.get("novel_category_ids") is None:
        return build_det_ext_evaluator(cfg, dataset_name, output_folder)
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    style = "coco" if meta.get("evaluator_type") == "coco" else "lvis"
    return OpenVocabEvaluator(
        dataset_name, tasks=("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",),
        output_dir=output_folder, max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
        instance_count_bins=list(cfg.TEST.INSTANCE_COUNT_BINS), style=style)


def test_vocabulary_embeddings(cfg: CfgNode, dataset_name: str):
    """The embeddings of ``dataset_name``'s classes from ``OPEN_VOCAB.TEST_EMBEDDINGS`` (or the
    training file), checked against the dataset's class names."""
    from det_ext.modeling.open_vocab import dataset_class_names, load_text_embeddings

    path = cfg.OPEN_VOCAB.TEST_EMBEDDINGS or cfg.OPEN_VOCAB.TRAIN_EMBEDDINGS
    return load_text_embeddings(path, dataset_class_names(dataset_name),
                                cfg.OPEN_VOCAB.EMBED_DIM or None,
                                f"test dataset '{dataset_name}'")


@TRAINER_REGISTRY.register()
class OpenVocabTrainer(DetExtTrainer):
    """Trainer of text-embedding detectors: evaluates every test dataset with its own vocabulary
    (``OPEN_VOCAB.TEST_EMBEDDINGS``, swapped in with ``set_vocabulary`` and swapped back
    afterwards) and reports generalized novel / base / all AP for open-vocabulary splits."""

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str,
                        output_folder: Optional[str] = None) -> DatasetEvaluator:
        return build_open_vocab_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators=None) -> Dict[str, Any]:
        from det_ext.modeling.open_vocab import find_open_vocab_heads, set_vocabulary

        heads = find_open_vocab_heads(model)
        train_names = list(heads.class_names)
        train_matrix = heads.box_predictor.cls_score.class_embeddings.detach().clone()
        results: Dict[str, Any] = OrderedDict()
        try:
            for idx, name in enumerate(cfg.DATASETS.TEST):
                emb = test_vocabulary_embeddings(cfg, name)
                set_vocabulary(model, emb.names, embeddings=emb, metadata_name=name)
                loader = cls.build_test_loader(cfg, name)
                evaluator = evaluators[idx] if evaluators else cls.build_evaluator(cfg, name)
                res = inference_on_dataset(model, loader, evaluator)
                results[name] = res
                if comm.is_main_process():
                    logger.info("Evaluation results for %s in csv format:", name)
                    print_csv_format(res)
        finally:
            set_vocabulary(model, train_names, embeddings=train_matrix,
                           metadata_name=cfg.DATASETS.TRAIN[0] if len(cfg.DATASETS.TRAIN)
                           else None)
        if len(results) == 1:
            results = list(results.values())[0]
        if comm.is_main_process() and results:
            logger.info("Evaluation results written to %s", save_metrics(cfg, results))
        return results


