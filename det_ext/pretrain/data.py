# Copyright (c) det_ext authors.
"""Pre-training data: object crops or whole images from Detectron2 / COCO / LVIS datasets or an
image folder, held in memory as square uint8 arrays, with labels, optional synthetic label noise,
the two-view augmentations of MoCo / MoPro and a class-aware sampler (ICCL)."""
from __future__ import annotations

import dataclasses
import logging
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2 as T

from det_ext.data.noise import add_label_noise
from det_ext.utils.errors import DatasetFormatError

from .background import BackgroundSwap
from .crops import crops_from_dicts, image_folder, masks_and_backgrounds

__all__ = [
    "SampleSet", "crops_from_dicts", "masks_and_backgrounds", "load_sample_set", "with_label_noise",
    "build_transforms", "RandomRotate90", "ViewDataset", "ClassAwareSampler", "TORCHVISION_MEAN",
    "TORCHVISION_STD",
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
        masks (Tensor or None): [N, S, S] bool instance masks of the crops (background swap).
        backgrounds (Tensor or None): [M, 3, S, S] uint8 object-free background patches.
    """

    images: torch.Tensor
    labels: torch.Tensor
    clean_labels: torch.Tensor
    class_names: List[str]
    class_frequency: Optional[List[str]] = None
    masks: Optional[torch.Tensor] = None
    backgrounds: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_sample_set(data_cfg, datasets: Optional[Sequence[str]] = None, seed: int = 0,
                    noise: bool = True, masks: bool = False) -> SampleSet:
    """Samples described by ``cfg.PRETRAIN.DATA`` (or the registered ``datasets`` given).

    Args:
        data_cfg (CfgNode): ``cfg.PRETRAIN.DATA``.
        datasets (list[str] or None): registered dataset names overriding ``DATASETS``.
        seed (int): seed of the synthetic label noise.
        noise (bool): apply ``NOISE_RATE`` (False for evaluation sets).
        masks (bool): also load the crops' instance masks and a background bank (for
            ``PRETRAIN.AUG.BACKGROUND_SWAP_PROB``; object crops of annotated datasets only).
    """
    size = data_cfg.STORE_SIZE
    freq, crop_masks, backgrounds = None, None, None
    if masks and (data_cfg.SOURCE == "image_folder" or data_cfg.MODE != "crops"):
        raise DatasetFormatError(
            "PRETRAIN.AUG.BACKGROUND_SWAP_PROB needs instance masks: PRETRAIN.DATA.MODE 'crops' "
            f"of an annotated dataset (got SOURCE '{data_cfg.SOURCE}', MODE '{data_cfg.MODE}')")
    if data_cfg.SOURCE == "image_folder":
        imgs, labels, names = image_folder(data_cfg.IMAGE_ROOT, size)
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
        if masks:
            crop_masks, backgrounds = masks_and_backgrounds(
                dicts, size, data_cfg.CROP_CONTEXT, data_cfg.MIN_BOX_SIZE, seed=seed)
            crop_masks = torch.from_numpy(crop_masks)
            backgrounds = torch.from_numpy(backgrounds).permute(0, 3, 1, 2).contiguous()
        names = list(meta.get("thing_classes", []))
        if not names:
            names = [str(i) for i in range(int(labels.max()) + 1)]
        freq = meta.get("class_frequency")
    else:
        raise DatasetFormatError(f"PRETRAIN.DATA.SOURCE: unknown source '{data_cfg.SOURCE}' "
                                 f"(detectron2, json, image_folder)")
    clean = torch.as_tensor(labels)
    images = torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).contiguous()
    logger.info("pre-training data: %d samples of %dx%d, %d classes", len(clean), size, size,
                len(names))
    samples = SampleSet(images, clean, clean, names, freq, crop_masks, backgrounds)
    return with_label_noise(samples, data_cfg, seed) if noise else samples


def with_label_noise(samples: SampleSet, data_cfg, seed: int = 0) -> SampleSet:
    """The samples with ``data_cfg.NOISE_RATE`` synthetic label noise (``NOISE_TYPE``) applied
    to their clean labels; images, masks and backgrounds are shared, not copied.

    Args:
        samples (SampleSet): the samples (their ``clean_labels`` are the source).
        data_cfg (CfgNode): ``cfg.PRETRAIN.DATA``.
        seed (int): seed of the noise draws.
    """
    clean = samples.clean_labels
    if data_cfg.NOISE_RATE <= 0:
        return dataclasses.replace(samples, labels=clean)
    noisy = clean.clone()
    known = clean >= 0  # unknown labels (-1) are left alone
    noisy[known] = torch.from_numpy(add_label_noise(
        clean[known].numpy(), samples.num_classes, data_cfg.NOISE_RATE,
        np.random.default_rng(seed), mode=data_cfg.NOISE_TYPE))
    logger.info("synthetic label noise (%s, rate %.2f): %d of %d labels changed",
                data_cfg.NOISE_TYPE, data_cfg.NOISE_RATE, int((noisy != clean).sum()), len(clean))
    return dataclasses.replace(samples, labels=noisy)


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
    """Samples as dicts ``{img_q, img_k (if a key transform), target, index}``.

    Args:
        samples (SampleSet): the samples (with ``masks`` if ``background_swap`` is given).
        transform_q, transform_k: the two views' transforms (``transform_k`` None: one view).
        background_swap (BackgroundSwap or None): applied to each view independently, before its
            transform.
    """

    def __init__(self, samples: SampleSet, transform_q, transform_k=None,
                 background_swap: Optional[BackgroundSwap] = None):
        if background_swap is not None and samples.masks is None:
            raise ValueError("PRETRAIN.AUG.BACKGROUND_SWAP_PROB > 0 needs the crops' instance "
                             "masks (load_sample_set(..., masks=True))")
        self.samples, self.transform_q, self.transform_k = samples, transform_q, transform_k
        self.background_swap = background_swap

    def _view(self, i: int) -> torch.Tensor:
        img = self.samples.images[i]
        if self.background_swap is None:
            return img
        return self.background_swap(img, self.samples.masks[i])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        out = {"img_q": self.transform_q(self._view(i)), "target": self.samples.labels[i],
               "index": torch.tensor(i)}
        if self.transform_k is not None:
            out["img_k"] = self.transform_k(self._view(i))
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
