# Copyright (c) det_ext authors.
"""Background replacement for object crops (``PRETRAIN.AUG.BACKGROUND_SWAP_PROB``).

On object-crop datasets each crop's background is unique, so instance discrimination can be
solved from the background alone. Replacing the pixels outside the instance mask, independently
in each view, by a patch of another image's background leaves the object as the only content the
two views share (the "background augmentation" idea of Ryali et al., ICCV 2021).

Backgrounds come from the training images themselves: every annotated object (dilated) is
removed by inpainting (``cv2.INPAINT_TELEA``), then square patches at the crops' scales are cut
and resized to the stored sample side.
"""
from __future__ import annotations

from typing import Dict, List

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch

from det_ext.evaluation.geometry import segmentation_to_rle
from det_ext.evaluation.ground_truth import EvaluationInputError
from det_ext.utils.errors import DatasetFormatError

__all__ = ["annotation_mask", "inpainted_background", "background_patches", "BackgroundSwap"]


def annotation_mask(ann: Dict, height: int, width: int, file_name: str = "") -> np.ndarray:
    """Binary instance mask of an annotation (polygons, compressed or uncompressed RLE).

    Args:
        ann (dict): annotation with ``segmentation``.
        height, width (int): image size.
        file_name (str): image file, for the error message.

    Returns:
        ndarray: [height, width] bool.
    """
    seg, where = ann.get("segmentation"), f"{file_name}: annotation {ann.get('id', '?')}"
    if not seg:
        raise DatasetFormatError(f"{where} has no 'segmentation' (instance masks are needed by "
                                 f"PRETRAIN.AUG.BACKGROUND_SWAP_PROB)")
    try:
        rle = segmentation_to_rle(seg, height, width, where)
    except EvaluationInputError as e:
        raise DatasetFormatError(str(e)) from None
    mask = mask_util.decode(rle).astype(bool)
    if mask.shape != (height, width):
        raise DatasetFormatError(f"{where}: mask of shape {mask.shape}, image is "
                                 f"{(height, width)}")
    return mask


def inpainted_background(image: np.ndarray, masks: List[np.ndarray], dilate: int = 2
                         ) -> np.ndarray:
    """The image with every object removed.

    Args:
        image (ndarray): [H, W, 3] uint8.
        masks (list[ndarray]): [H, W] bool instance masks.
        dilate (int): pixels added around the objects (their anti-aliased edges).

    Returns:
        ndarray: [H, W, 3] uint8.
    """
    if not masks:
        return image
    union = np.any(np.stack(masks), axis=0).astype(np.uint8)
    if dilate > 0:
        union = cv2.dilate(union, np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8))
    return cv2.inpaint(image, union, 3, cv2.INPAINT_TELEA)


def background_patches(background: np.ndarray, sides: List[float], size: int, count: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Square patches of a background, at the scales of the crops taken from its image.

    Args:
        background (ndarray): [H, W, 3] uint8.
        sides (list[float]): crop sides in pixels (empty: drawn in [size / 2, min(H, W)]).
        size (int): output side S.
        count (int): number of patches.
        rng: numpy generator.

    Returns:
        ndarray: [count, S, S, 3] uint8.
    """
    h, w = background.shape[:2]
    out = []
    for _ in range(count):
        side = float(rng.choice(sides)) if sides else rng.uniform(size / 2, min(h, w))
        side = int(np.clip(round(side), 4, min(h, w)))
        y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        patch = background[y0:y0 + side, x0:x0 + side]
        out.append(cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA))
    return np.stack(out)


class BackgroundSwap:
    """Replaces a sample's background by a random patch of the bank, with probability ``prob``.

    Args:
        backgrounds (Tensor): [M, 3, S, S] uint8 bank.
        prob (float): probability of a replacement per call (per view).
    """

    def __init__(self, backgrounds: torch.Tensor, prob: float):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"PRETRAIN.AUG.BACKGROUND_SWAP_PROB: {prob} not in [0, 1]")
        if backgrounds is None or len(backgrounds) == 0:
            raise ValueError("PRETRAIN.AUG.BACKGROUND_SWAP_PROB > 0 needs a background bank "
                             "(load the samples with masks=True)")
        self.backgrounds, self.prob = backgrounds, prob

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: image [3, S, S] uint8, mask [S, S] bool (object pixels). Returns [3, S, S]."""
        if float(torch.rand(())) >= self.prob:
            return image
        bg = self.backgrounds[int(torch.randint(len(self.backgrounds), ()))]
        if float(torch.rand(())) < 0.5:
            bg = bg.flip(-1)
        return torch.where(mask, image, bg)
