# Copyright (c) det_ext authors.
"""Square samples from datasets: object crops or whole images of Detectron2 dataset dicts, the
crops' instance masks with object-free background patches, and class-per-folder images."""
from __future__ import annotations

import os
from typing import Dict, List, Sequence

import cv2
import numpy as np
from detectron2.structures import BoxMode

from det_ext.utils.errors import DatasetFormatError

from .background import annotation_mask, background_patches, inpainted_background

__all__ = ["crops_from_dicts", "masks_and_backgrounds", "image_folder"]


def _square_crop(image: np.ndarray, box: Sequence[float], context: float, size: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * context)
    h, w = image.shape[:2]
    a0, b0 = int(np.floor(cx - side / 2)), int(np.floor(cy - side / 2))
    a1, b1 = int(np.ceil(cx + side / 2)), int(np.ceil(cy + side / 2))
    pad = max(0, -a0, -b0, a1 - w, b1 - h)
    if pad:  # replicate the border so every crop stays square and centred
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    crop = image[b0 + pad:b1 + pad, a0 + pad:a1 + pad]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def _read_rgb(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetFormatError(f"{path}: image file missing or unreadable")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _object_boxes(d: Dict, min_box_size: float) -> List:
    """(annotation, XYXY box, category) of the non-crowd objects of a dataset dict that are large
    enough to crop, in annotation order."""
    out = []
    for ann in d.get("annotations", []):
        if ann.get("iscrowd", 0):
            continue
        box = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
        if min(box[2] - box[0], box[3] - box[1]) >= min_box_size:
            out.append((ann, box, int(ann["category_id"])))
    return out


def crops_from_dicts(dicts: List[Dict], size: int, mode: str = "crops", context: float = 0.1,
                     min_box_size: float = 2.0):
    """Square samples and labels from Detectron2 dataset dicts.

    Args:
        dicts (list[dict]): with ``file_name`` and ``annotations`` (``bbox``, ``bbox_mode``,
            contiguous ``category_id``).
        size (int): output side S.
        mode (str): ``"crops"`` (one per object) or ``"images"`` (whole image, label = category
            of the largest object, -1 if none).

    Returns:
        (ndarray, ndarray): images [N, S, S, 3] uint8 RGB, labels [N] int64.
    """
    if mode not in ("crops", "images"):
        raise DatasetFormatError(f"PRETRAIN.DATA.MODE: unknown mode '{mode}' (crops, images)")
    images, labels = [], []
    for d in dicts:
        img = _read_rgb(d["file_name"])
        boxes = [(box, cat) for _, box, cat in _object_boxes(d, min_box_size)]
        if mode == "images":
            images.append(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA))
            areas = [(b[2] - b[0]) * (b[3] - b[1]) for b, _ in boxes]
            labels.append(boxes[int(np.argmax(areas))][1] if boxes else -1)
            continue
        for box, cat in boxes:
            images.append(_square_crop(img, box, context, size))
            labels.append(cat)
    if not images:
        raise DatasetFormatError("pre-training data: no samples (no images or no annotated boxes)")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def masks_and_backgrounds(dicts: List[Dict], size: int, context: float = 0.1,
                          min_box_size: float = 2.0, patches_per_image: int = 4, seed: int = 0):
    """Instance masks of the crops of :func:`crops_from_dicts` (``mode="crops"``, same order) and
    a bank of object-free background patches (:mod:`det_ext.pretrain.background`).

    Returns:
        (ndarray, ndarray): masks [N, S, S] bool, backgrounds [M, S, S, 3] uint8 RGB.
    """
    rng = np.random.default_rng(seed)
    masks, bank = [], []
    for d in dicts:
        img = _read_rgb(d["file_name"])
        h, w = img.shape[:2]
        objects = _object_boxes(d, min_box_size)
        full = {id(a): annotation_mask(a, h, w, d["file_name"]) for a in d.get("annotations", [])}
        sides = []
        for ann, box, _ in objects:
            crop = _square_crop(full[id(ann)].astype(np.float32), box, context, size)
            masks.append(crop > 0.5)
            sides.append(max(box[2] - box[0], box[3] - box[1]) * (1.0 + 2.0 * context))
        background = inpainted_background(img, list(full.values()))
        bank.append(background_patches(background, sides, size, patches_per_image, rng))
    if not masks:
        raise DatasetFormatError("pre-training data: no samples (no images or no annotated boxes)")
    return np.stack(masks), np.concatenate(bank)


def image_folder(root: str, size: int):
    if not os.path.isdir(root):
        raise DatasetFormatError(f"PRETRAIN.DATA.IMAGE_ROOT: folder not found: {root}")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise DatasetFormatError(f"{root}: no class sub-folders")
    images, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(root, c))):
            if f.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".webp")):
                img = _read_rgb(os.path.join(root, c, f))
                images.append(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA))
                labels.append(i)
    if not images:
        raise DatasetFormatError(f"{root}: no images in the class sub-folders")
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes
