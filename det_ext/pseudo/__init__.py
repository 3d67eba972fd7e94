# Copyright (c) det_ext authors.
"""PB-OVD-style pseudo-box generation: vision-language Grad-CAM + caption matching + proposals."""

from .albef import AlbefConfig, AlbefITM
from .checkpoint import CheckpointError, load_albef_checkpoint, save_albef_checkpoint
from .matching import CaptionMatcher, Match, Vocabulary
from .selection import normalize_map, select_boxes
from .text import WordPieceTokenizer, clean_caption

__all__ = [
    "AlbefConfig",
    "AlbefITM",
    "CheckpointError",
    "load_albef_checkpoint",
    "save_albef_checkpoint",
    "CaptionMatcher",
    "Match",
    "Vocabulary",
    "normalize_map",
    "select_boxes",
    "WordPieceTokenizer",
    "clean_caption",
]
