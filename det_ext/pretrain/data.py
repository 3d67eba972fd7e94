# Copyright (c) det_ext authors.
"""Pre-training data: object crops or whole images from Detectron2 / COCO / LVIS datasets or an
image folder, held in memory as square uint8 arrays, with labels, optional synthetic label noise,
the two-view augmentations of MoCo / MoPro and a class-aware sampler (ICCL)."""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Dict, Iterator, List, Optional, Sequence

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2 as T

from det_ext.data.noise import add_label_noise
from det_ext.utils.errors import DatasetFormatError

__all__ = [
    "SampleSet", "crops_from_dicts", "load_sample_set", "build_transforms", "RandomRotate90",
    "ViewDataset", "ClassAwareSampler", "TORCHVISION_MEAN", "TORCHVISION_STD",
]

logger = logging.getLogger(__name__)
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass
class SampleSet:
    """Samples in memory.

    Attributes:
        images (Tensor): [N, 3, S, S] uint8, RGB.
        labels (Tensor): [N] long (possibly noisy), -1 when unknown.
        clean_labels (Tensor): [N] long, the labels before synthetic noise.
        class_names (list[str]): class names (contiguous ids).
        class_frequency (list[str] or None): LVIS frequency group per class (r/c/f), if known.
    """

    images: torch.Tensor
    labels: torch.Tensor
    clean_labels: torch.Tensor
    class_names: List[str]
    class_frequency: Optional[List[str]] = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


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
        boxes = []
        for ann in d.get("annotations", []):
            if ann.get("iscrowd", 0):
                continue
            box = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
            if min(box[2] - box[0], box[3] - box[1]) >= min_box_size:
                boxes.append((box, int(ann["category_id"])))
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


def _image_folder(root: str, size: int):
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


def load_sample_set(data_cfg, datasets: Optional[Sequence[str]] = None, seed: int = 0,
                    noise: bool = True) -> SampleSet:
    """Samples described by ``cfg.PRETRAIN.DATA`` (or the registered ``datasets`` given).

    Args:
        data_cfg (CfgNode): ``cfg.PRETRAIN.DATA``.
        datasets (list[str] or None): registered dataset names overriding ``DATASETS``.
        seed (int): seed of the synthetic label noise.
        noise (bool): apply ``NOISE_RATE`` (False for evaluation sets).
    """
    size = data_cfg.STORE_SIZE
    freq = None
    if data_cfg.SOURCE == "image_folder":
        imgs, labels, names = _image_folder(data_cfg.IMAGE_ROOT, size)
    elif data_cfg.SOURCE in ("detectron2", "json"):
        if data_cfg.SOURCE == "json" and datasets is None:
            from det_ext.data.datasets import load_lvis_format_json, metadata_from_categories
            from det_ext.data.datasets import read_dataset_json
            dicts = load_lvis_format_json(data_cfg.JSON_FILE, data_cfg.IMAGE_ROOT)
            meta = metadata_from_categories(read_dataset_json(data_cfg.JSON_FILE)["categories"])
        else:
            names_ = list(datasets if datasets is not None else data_cfg.DATASETS)
            if not names_:
                raise DatasetFormatError("PRETRAIN.DATA.DATASETS: no dataset given")
            dicts = [d for n in names_ for d in DatasetCatalog.get(n)]
            meta = MetadataCatalog.get(names_[0]).as_dict()
        imgs, labels = crops_from_dicts(dicts, size, data_cfg.MODE, data_cfg.CROP_CONTEXT,
                                        data_cfg.MIN_BOX_SIZE)
        names = list(meta.get("thing_classes", []))
        if not names:
            names = [str(i) for i in range(int(labels.max()) + 1)]
        freq = meta.get("class_frequency")
    else:
        raise DatasetFormatError(f"PRETRAIN.DATA.SOURCE: unknown source '{data_cfg.SOURCE}' "
                                 f"(detectron2, json, image_folder)")
    clean = torch.as_tensor(labels)
    noisy = clean
    if noise and data_cfg.NOISE_RATE > 0:
        noisy = clean.clone()
        known = clean >= 0  # unknown labels (-1) are left alone
        noisy[known] = torch.from_numpy(add_label_noise(
            clean[known].numpy(), len(names), data_cfg.NOISE_RATE, np.random.default_rng(seed),
            mode=data_cfg.NOISE_TYPE))
    images = torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).contiguous()
    logger.info("pre-training data: %d samples of %dx%d, %d classes, %d noisy labels",
                len(clean), size, size, len(names), int((noisy != clean).sum()))
    return SampleSet(images, noisy, clean, names, freq)


def build_transforms(aug_cfg, input_size: int, kind: str) -> T.Compose:
    """Augmentations on uint8 [3, S, S] tensors, ending in torchvision normalisation.

    Args:
        aug_cfg (CfgNode): ``cfg.PRETRAIN.AUG``.
        input_size (int): output side.
        kind (str): ``"strong"`` (MoCo v2: crop, colour jitter, grayscale, blur, flip),
            ``"weak"`` (MoPro's query view: crop + flip) or ``"eval"`` (resize only).
    """
    tail = [T.ToDtype(torch.float32, scale=True), T.Normalize(TORCHVISION_MEAN, TORCHVISION_STD)]
    if kind == "eval":
        return T.Compose([T.Resize((input_size, input_size), antialias=True), *tail])
    ops = [T.RandomResizedCrop(input_size, scale=tuple(aug_cfg.SCALE), antialias=True)]
    if kind == "strong":
        b, c, s, h = aug_cfg.COLOR_JITTER
        if aug_cfg.JITTER_PROB > 0:
            ops.append(T.RandomApply([T.ColorJitter(b, c, s, h)], p=aug_cfg.JITTER_PROB))
        if aug_cfg.GRAYSCALE_PROB > 0:
            ops.append(T.RandomGrayscale(p=aug_cfg.GRAYSCALE_PROB))
        if aug_cfg.BLUR_PROB > 0:
            k = max(3, (input_size // 10) | 1)
            ops.append(T.RandomApply([T.GaussianBlur(k, sigma=(0.1, 2.0))], p=aug_cfg.BLUR_PROB))
    elif kind != "weak":
        raise ValueError(f"unknown transform kind '{kind}'")
    ops.append(T.RandomHorizontalFlip())
    if aug_cfg.ROTATE_90:
        ops.append(RandomRotate90())
    return T.Compose(ops + tail)


class RandomRotate90(torch.nn.Module):
    """Rotation by a uniformly drawn multiple of 90 degrees of a [C, H, W] image (no padding:
    for data whose objects appear at any orientation, such as LT-Shapes)."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return torch.rot90(img, int(torch.randint(4, ())), dims=(-2, -1))


class ViewDataset(Dataset):
    """Samples as dicts ``{img_q, img_k (if a key transform), target, index}``."""

    def __init__(self, samples: SampleSet, transform_q, transform_k=None):
        self.samples, self.transform_q, self.transform_k = samples, transform_q, transform_k

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        img = self.samples.images[i]
        out = {"img_q": self.transform_q(img), "target": self.samples.labels[i],
               "index": torch.tensor(i)}
        if self.transform_k is not None:
            out["img_k"] = self.transform_k(img)
        return out


class ClassAwareSampler(Sampler):
    """Draws ``num_samples`` indices per epoch: a class with probability ~ n_c ** exponent
    (0: class-balanced), then a uniform sample of it. Deterministic given seed and epoch.

    Args:
        labels (Tensor): [N] labels (>= 0).
        num_samples (int): indices per epoch.
        exponent (float): re-balancing exponent.
        seed (int): base seed; call :meth:`set_epoch` each epoch.
    """

    def __init__(self, labels: torch.Tensor, num_samples: int, exponent: float = 0.0,
                 seed: int = 0):
        self.labels = torch.as_tensor(labels)
        self.classes = torch.unique(self.labels[self.labels >= 0])
        self.members = [(self.labels == c).nonzero().flatten() for c in self.classes]
        counts = torch.tensor([len(m) for m in self.members], dtype=torch.float64)
        self.class_prob = counts ** exponent / (counts ** exponent).sum()
        self.num_samples, self.seed, self.epoch = int(num_samples), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        cls = torch.multinomial(self.class_prob, self.num_samples, replacement=True, generator=gen)
        picks = torch.rand(self.num_samples, generator=gen, dtype=torch.float64)
        for c, u in zip(cls.tolist(), picks.tolist()):
            m = self.members[c]
            yield int(m[min(int(u * len(m)), len(m) - 1)])
