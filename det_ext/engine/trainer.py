# Copyright (c) det_ext authors.
"""The det_ext trainer: Detectron2's ``DefaultTrainer`` with det_ext evaluators and outputs."""
from __future__ import annotations

import logging
import os
import weakref
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, PascalVOCDetectionEvaluator
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from detectron2.utils.registry import Registry

from det_ext.utils.io import atomic_write_json

from .amp import amp_dtype, disable_amp_on_cpu, enable_amp

__all__ = ["DetExtTrainer", "TRAINER_REGISTRY", "build_trainer_class", "build_det_ext_evaluator",
           "save_metrics"]

TRAINER_REGISTRY = Registry("TRAINER")
TRAINER_REGISTRY.__doc__ = """
Trainer classes (``DefaultTrainer`` subclasses) selectable with ``cfg.DET_EXT.TRAINER``, so that
``tools/train_net.py`` runs every det_ext training stage (e.g. SimCal calibration).
"""

logger = logging.getLogger(__name__)


def build_det_ext_evaluator(cfg: CfgNode, dataset_name: str,
                            output_folder: Optional[str] = None) -> DatasetEvaluator:
    """Chooses the evaluator from the dataset's ``evaluator_type``.

    ``"lvis"`` (LT-Shapes, LVIS, COCO-LT) uses det_ext's exact, numpy-2 LVIS-style evaluator with
    ``TEST.DETECTIONS_PER_IMAGE`` detections per image, the Fixed-AP cap and the instance-count bins
    from the config; ``"coco"`` and ``"pascal_voc"`` use Detectron2's.
    """
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type", "lvis")
    if kind == "lvis":
        from det_ext.evaluation import LVISStyleEvaluator

        return LVISStyleEvaluator(
            dataset_name,
            tasks=("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",),
            output_dir=output_folder,
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            max_dets_per_cat=cfg.TEST.MAX_DETS_PER_CATEGORY or None,
            instance_count_bins=list(cfg.TEST.INSTANCE_COUNT_BINS),
        )
    if kind == "coco":
        return COCOEvaluator(dataset_name, output_dir=output_folder,
                             max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE)
    if kind == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    raise ValueError(f"dataset '{dataset_name}': no evaluator for evaluator_type '{kind}'")


def save_metrics(cfg: CfgNode, results: Dict[str, Any], path: Optional[str] = None) -> str:
    """Writes evaluation results (percent) to ``OUTPUT_DIR/metrics.json`` atomically.

    With one test dataset the file is ``{"bbox": {...}, "segm": {...}}``; with several it is keyed
    by dataset name first.
    """
    path = path or os.path.join(cfg.OUTPUT_DIR, "metrics.json")
    plain = {k: (dict(v) if isinstance(v, OrderedDict) else v) for k, v in results.items()}
    atomic_write_json(path, plain, indent=2)
    return path


@TRAINER_REGISTRY.register()
class DetExtTrainer(DefaultTrainer):
    """``DefaultTrainer`` with det_ext's evaluators, atomic checkpoints and a ``metrics.json``.

    ``SOLVER.AMP.ENABLED`` trains in mixed precision on CUDA (Detectron2's ``AMPTrainer`` at
    ``SOLVER.AMP.DTYPE``) and on a CPU (bfloat16 autocast, :mod:`det_ext.engine.amp`).

    Detectron2's line-per-iteration training log is written to ``training_metrics.json`` so that
    ``metrics.json`` can hold the final evaluation results.
    """

    def __init__(self, cfg: CfgNode):
        # default_setup seeds every RNG from cfg.SEED in the tools; seeding here too makes a
        # trainer built in-process (benchmarks, notebooks) independent of what ran before it:
        # the heads' initial weights and the data order come from cfg.SEED alone.
        if cfg.SEED >= 0:
            seed_all_rng(cfg.SEED + comm.get_rank())
        if cfg.SOLVER.AMP.ENABLED:
            amp_dtype(cfg)  # a bad SOLVER.AMP.DTYPE fails before the model is built
        super().__init__(disable_amp_on_cpu(cfg))
        enable_amp(self, cfg)

    def build_hooks(self) -> List[Any]:
        # Called by DefaultTrainer.__init__ right after it creates its checkpointer: swap in the
        # atomic one before the checkpointing hooks capture it.
        self.checkpointer = AtomicDetectionCheckpointer(
            self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        return super().build_hooks()

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str,
                        output_folder: Optional[str] = None) -> DatasetEvaluator:
        return build_det_ext_evaluator(cfg, dataset_name, output_folder)

    def train(self) -> Optional[Dict[str, Any]]:
        """Trains, then returns the results of the final evaluation (None when nothing was
        evaluated); ``DefaultTrainer.train`` returns them only when ``TEST.EXPECTED_RESULTS`` is
        set."""
        results = super().train()
        return results if results is not None else getattr(self, "_last_eval_results", None)

    def build_writers(self) -> List[Any]:
        out = self.cfg.OUTPUT_DIR
        return [CommonMetricPrinter(self.max_iter),
                JSONWriter(os.path.join(out, "training_metrics.json")),
                TensorboardXWriter(out)]

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators=None) -> Dict[str, Any]:
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results:
            logger.info("Evaluation results written to %s", save_metrics(cfg, results))
        return results


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """A ``DetectionCheckpointer`` whose ``save`` writes a temporary file and renames it, so that a
    job killed while saving never leaves a truncated checkpoint behind."""

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        save_file = os.path.join(self.save_dir, f"{name}.pth")
        tmp = f"{save_file}.tmp"
        self.logger.info("Saving checkpoint to %s", save_file)
        with self.path_manager.open(tmp, "wb") as f:
            torch.save(data, f)
        os.replace(tmp, save_file)
        self.tag_last_checkpoint(os.path.basename(save_file))


def build_trainer_class(cfg: CfgNode) -> type:
    """The trainer class named by ``cfg.DET_EXT.TRAINER`` in :data:`TRAINER_REGISTRY`."""
    return TRAINER_REGISTRY.get(cfg.DET_EXT.TRAINER)
