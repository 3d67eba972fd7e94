# Copyright (c) det_ext authors.
"""SimCal's calibration stage as a Detectron2 trainer (``DET_EXT.TRAINER: "SimCalTrainer"``).

``tools/train_net.py --config-file configs/<dataset>/simcal_*.yaml MODEL.WEIGHTS <baseline>``
loads the trained baseline into a :class:`~det_ext.modeling.simcal.SimCalRCNN`, initialises the
calibration head from the original box head (``3fc_ft``), and trains only that head on bi-level
sampled batches with the ``SIMCAL.SOLVER`` schedule. Checkpoints hold both heads, so
``--eval-only MODEL.WEIGHTS <calibrated>`` evaluates the ``SIMCAL.INFERENCE_MODE`` scoring.
"""
from __future__ import annotations

import logging

import torch
from detectron2.config import CfgNode

from det_ext.utils.errors import ConfigInputError

from .trainer import TRAINER_REGISTRY, DetExtTrainer

__all__ = ["SimCalTrainer", "calibration_config"]

logger = logging.getLogger(__name__)


def calibration_config(cfg: CfgNode) -> CfgNode:
    """A copy of ``cfg`` whose ``SOLVER`` schedule is the calibration one (``SIMCAL.SOLVER``), so
    that Detectron2's scheduler, checkpointing and iteration count follow it."""
    out = cfg.clone()
    out.defrost()
    s = cfg.SIMCAL.SOLVER
    out.SOLVER.MAX_ITER = s.MAX_ITER
    out.SOLVER.BASE_LR = s.BASE_LR
    out.SOLVER.MOMENTUM = s.MOMENTUM
    out.SOLVER.WEIGHT_DECAY = s.WEIGHT_DECAY
    out.SOLVER.STEPS = tuple(s.STEPS)
    out.SOLVER.GAMMA = s.GAMMA
    out.SOLVER.WARMUP_ITERS = s.WARMUP_ITERS
    out.SOLVER.CHECKPOINT_PERIOD = s.CHECKPOINT_PERIOD
    out.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
    out.SOLVER.IMS_PER_BATCH = cfg.SIMCAL.IMS_PER_BATCH
    out.SOLVER.REFERENCE_WORLD_SIZE = 0  # the SimCal batch is given in total, never rescaled
    out.freeze()
    return out


@TRAINER_REGISTRY.register()
class SimCalTrainer(DetExtTrainer):
    """Trains a SimCal calibration head on top of a frozen, trained detector."""

    def __init__(self, cfg: CfgNode):
        super().__init__(calibration_config(cfg))

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        from det_ext.modeling.simcal import SimCalRCNN

        model = super().build_model(cfg)
        if not isinstance(model, SimCalRCNN):
            raise ConfigInputError("MODEL.META_ARCHITECTURE: the SimCal trainer needs "
                                   f"'SimCalRCNN', got '{cfg.MODEL.META_ARCHITECTURE}'")
        return model

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        """Plain SGD (reference: lr 0.01, no momentum, no weight decay) on the calibration head."""
        params = [p for p in model.parameters() if p.requires_grad]
        s = cfg.SIMCAL.SOLVER
        return torch.optim.SGD(params, lr=s.BASE_LR, momentum=s.MOMENTUM,
                               weight_decay=s.WEIGHT_DECAY)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        from det_ext.modeling.simcal import build_simcal_train_loader

        return build_simcal_train_loader(cfg)

    def resume_or_load(self, resume: bool = True) -> None:
        """Loads ``MODEL.WEIGHTS`` (or the last calibration checkpoint with ``resume``), then
        initialises the calibration head from the loaded original head if the checkpoint did not
        already contain a calibration head."""
        if not self.cfg.MODEL.WEIGHTS and not (resume and self.checkpointer.has_checkpoint()):
            raise ConfigInputError("MODEL.WEIGHTS: SimCal calibrates a trained detector; give the "
                                   "baseline checkpoint (e.g. MODEL.WEIGHTS .../model_final.pth)")
        super().resume_or_load(resume=resume)
        dataset = getattr(self._trainer.data_loader, "simcal_dataset", None)
        if dataset is not None:  # the loader's workers start at the first step, after this
            dataset.start_step = self.start_iter
        model = self.model.module if hasattr(self.model, "module") else self.model
        if model.initialize_calibration_head():
            logger.info("SimCal: calibration head '%s' initialised after loading %s",
                        self.cfg.SIMCAL.HEAD, self.cfg.MODEL.WEIGHTS)
        else:
            logger.info("SimCal: calibration head restored from the checkpoint")
