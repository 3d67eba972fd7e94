# Copyright (c) det_ext authors.
"""Self-/weakly-supervised ResNet pre-training (PCL, MoPro, ICCL on one momentum-contrast engine)
and conversion of pre-trained checkpoints into Detectron2's format."""
from .convert import CheckpointFormatError, ConversionReport, convert_checkpoint

__all__ = ["CheckpointFormatError", "ConversionReport", "convert_checkpoint"]
