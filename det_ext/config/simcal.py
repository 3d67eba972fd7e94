# Copyright (c) det_ext authors.
"""Config keys of SimCal (bi-level sampled calibration heads and dual-head inference)."""
from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_simcal_config"]


def add_simcal_config(cfg: CN) -> None:
    """Adds the ``SIMCAL`` node to ``cfg`` in place.

    Defaults follow the reference implementation (twangnh/SimCal, see docs/simcal.md): a ``3fc_ft``
    head, 16 classes x 1 image per step, SGD lr 0.01 without momentum or weight decay, 12k steps
    with lr x0.1 at 7k and x0.01 at 10k.
    """
    cfg.SIMCAL = CN()
    # Calibration head variant, from det_ext.modeling.simcal.CALIBRATION_HEAD_REGISTRY:
    # "3fc_ft" (copy of the original box head's FC layers and classifier, fine-tuned),
    # "3fc_rand" (same layout, random init) or "2fc_rand" (one hidden FC layer, random init).
    cfg.SIMCAL.HEAD = "3fc_ft"
    # Hidden width of the "*_rand" heads; 0 means MODEL.ROI_BOX_HEAD.FC_DIM (1024 in the paper).
    cfg.SIMCAL.HEAD_FC_DIM = 0
    # Test-time combination of the two classifiers: "dual" (calibrated scores for low-shot
    # classes, everything else from the original head), "calibrated" (calibrated head for every
    # class) or "original" (the original head only, i.e. the baseline).
    cfg.SIMCAL.INFERENCE_MODE = "dual"
    # Dual rule threshold T: classes with fewer than T training samples (see DUAL_STATISTIC) take
    # the calibrated score. -1 = the reference value for the training dataset: 100 for LVIS, 400
    # for COCO-LT, and for any other dataset the smallest count among its frequent ('f') classes.
    cfg.SIMCAL.DUAL_THRESHOLD = -1
    # Which per-class training statistic is compared with T: "instance_count" (the reference) or
    # "image_count". Counts come from the metadata of DATASETS.TRAIN.
    cfg.SIMCAL.DUAL_STATISTIC = "instance_count"

    # --- Bi-level sampling (calibration stage only) ---
    # Total images per calibration step over all GPUs (reference: 4 GPUs x 4 images = 16).
    cfg.SIMCAL.IMS_PER_BATCH = 16
    # Classes drawn per step; IMS_PER_BATCH / CLASSES_PER_BATCH images are drawn per class
    # (reference: 16 classes x 1 image). Both must divide evenly over the GPUs.
    cfg.SIMCAL.CLASSES_PER_BATCH = 16
    # Draw the classes of one step with replacement (the reference's np.random.choice default).
    cfg.SIMCAL.CLASS_SAMPLING_WITH_REPLACEMENT = True
    # Per-image RoI subsampling before composing the batch (reference RandomSampler: 512, 0.25).
    cfg.SIMCAL.ROI_BATCH_SIZE_PER_IMAGE = 512
    # Fraction of positives in the per-image RoI subsample.
    cfg.SIMCAL.ROI_POSITIVE_FRACTION = 0.25
    # IoU at which a proposal is labelled positive (below it: background); reference 0.5.
    cfg.SIMCAL.ROI_IOU_THRESHOLD = 0.5
    # Background RoIs kept per foreground RoI, pooled over the whole batch (reference 1:1).
    cfg.SIMCAL.NEGATIVE_TO_POSITIVE_RATIO = 1.0
    # Use the RPN's training top-k (RPN.PRE/POST_NMS_TOPK_TRAIN) for the frozen proposals, as the
    # reference does (its rpn_proposal train settings); False uses the test top-k.
    cfg.SIMCAL.USE_TRAIN_PROPOSAL_TOPK = True

    # --- Optimiser and schedule of the calibration head (replace SOLVER.* in that stage) ---
    cfg.SIMCAL.SOLVER = CN()
    # Calibration steps (reference: 12 epochs of 1000 steps).
    cfg.SIMCAL.SOLVER.MAX_ITER = 12000
    # Learning rate of plain SGD on the calibration head.
    cfg.SIMCAL.SOLVER.BASE_LR = 0.01
    # SGD momentum (reference: none).
    cfg.SIMCAL.SOLVER.MOMENTUM = 0.0
    # Weight decay (reference: none).
    cfg.SIMCAL.SOLVER.WEIGHT_DECAY = 0.0
    # Steps at which the lr is multiplied by GAMMA (reference: epochs 8 and 11 -> 7k and 10k).
    cfg.SIMCAL.SOLVER.STEPS = (7000, 10000)
    # Learning-rate decay factor at each step.
    cfg.SIMCAL.SOLVER.GAMMA = 0.1
    # Linear warm-up iterations (reference: none).
    cfg.SIMCAL.SOLVER.WARMUP_ITERS = 0
    # Checkpoint period in steps (reference: every 1000-step epoch).
    cfg.SIMCAL.SOLVER.CHECKPOINT_PERIOD = 1000
