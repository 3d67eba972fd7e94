# Copyright (c) det_ext authors.
"""Config keys of the noise-resistant dual-head detector (``cfg.NOISY``).

The method is a reconstruction (see docs/noisy_boxes.md): every default below is an engineering
choice, not a verified value from the paper.
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_noisy_config"]


def add_noisy_config(cfg: CN) -> None:
    """Adds ``cfg.NOISY`` in place."""
    cfg.NOISY = CN()
    # Iterations of plain training on the noisy annotations before correction starts (the heads
    # must have learnt something before their disagreement means anything).
    cfg.NOISY.WARMUP_ITERS = 200
    # Sample the RoIs of the second head independently of the first (otherwise both heads see the
    # same sampled proposals and differ only by their random initialisation).
    cfg.NOISY.INDEPENDENT_SAMPLING = False
    # Heads trained on the corrected annotations ("head1", "head2"); a head left out is trained
    # on the noisy annotations (an ablation: correction used by one head only).
    cfg.NOISY.CORRECTED_HEADS = ["head1", "head2"]
    # Test-time output: "mean" (mean of the two heads' class probabilities and boxes), "head1"
    # or "head2".
    cfg.NOISY.TEST_OUTPUT = "mean"
    # Fixed bilinear samples per bin side of the box-differentiable RoI pooling used by step 1.
    cfg.NOISY.POOLER_SAMPLING_RATIO = 2

    cfg.NOISY.BOX_CORRECTION = CN()
    # Step 1 (class-agnostic box correction) on/off.
    cfg.NOISY.BOX_CORRECTION.ENABLED = True
    # Gradient steps on the box coordinates (the paper is recalled as using one).
    cfg.NOISY.BOX_CORRECTION.STEPS = 1
    # Step size alpha. With SCALE_BY_SIZE the step is taken in box-relative coordinates
    # (u = x / w, v = y / h): delta_x = -alpha * w * dL/du, where dL/du = w * dL/dx.
    cfg.NOISY.BOX_CORRECTION.STEP_SIZE = 0.1
    # Take the step in box-relative coordinates (large boxes move more pixels than small ones).
    cfg.NOISY.BOX_CORRECTION.SCALE_BY_SIZE = True
    # Normalise each box's gradient to unit max-norm before the step (the step then moves the
    # box's most-changed side by exactly STEP_SIZE of its size); off: the raw gradient.
    cfg.NOISY.BOX_CORRECTION.NORMALIZE_GRAD = False
    # Upper bound on one step, as a fraction of the box size (guards against exploding gradients).
    cfg.NOISY.BOX_CORRECTION.MAX_STEP = 0.2
    # Discrepancy D between the heads' class distributions: "l1" (sum |p1 - p2|), "l2" or
    # "js" (Jensen-Shannon divergence).
    cfg.NOISY.BOX_CORRECTION.DISCREPANCY = "l1"
    # Region objectness o(b): "heads" (1 - mean background probability of the two heads), "rpn"
    # (sigmoid of the RPN objectness at the box centre, matching anchor) or "none".
    cfg.NOISY.BOX_CORRECTION.OBJECTNESS = "heads"
    # lambda: weight of the objectness term in L(b) = D - lambda * o(b).
    cfg.NOISY.BOX_CORRECTION.OBJECTNESS_WEIGHT = 1.0

    cfg.NOISY.LABEL_CORRECTION = CN()
    # Step 2 label correction (soft labels distilled from both heads) on/off; off: the noisy label
    # (one-hot) is kept.
    cfg.NOISY.LABEL_CORRECTION.ENABLED = True
    # Sharpening temperature T: sharpen(p)_c = p_c^(1/T) / sum_k p_k^(1/T) (DivideMix-style 0.5).
    cfg.NOISY.LABEL_CORRECTION.TEMPERATURE = 0.5
    # Average the noisy label's one-hot vector with the two heads' distributions before sharpening
    # (keeps the annotation's vote; without it the label is the heads' opinion only).
    cfg.NOISY.LABEL_CORRECTION.INCLUDE_NOISY_LABEL = True

    cfg.NOISY.BOX_REFINEMENT = CN()
    # Step 2 class-specific box refinement with the two heads' regressions on/off.
    cfg.NOISY.BOX_REFINEMENT.ENABLED = True
    # "soft": deltas weighted by the corrected soft label; "argmax": deltas of its top class.
    cfg.NOISY.BOX_REFINEMENT.WEIGHTING = "soft"
