# Copyright (c) det_ext authors.
"""Background replacement for pre-training crops: instance masks from every segmentation format,
inpainted backgrounds, the swap itself, crop masks aligned with the crops, config errors and a
training run with the swap on."""
import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode

from det_ext.pretrain.background import (BackgroundSwap, annotation_mask, background_patches,
                                         inpainted_background)
from det_ext.pretrain.cli import build_pretrain_config
from det_ext.pretrain.crops import crops_from_dicts, masks_and_backgrounds
from det_ext.pretrain.data import SampleSet, ViewDataset, build_transforms, load_sample_set
from det_ext.pretrain.train import PretrainRunner
from det_ext.utils.errors import DatasetFormatError

from conftest import tiny_pretrain_opts as _opts

BG, OBJ = (90, 120, 60), (220, 30, 30)


def _square_world(tmp_path, n=2):
    """Images of 40 x 48 px: uniform background BG, one OBJ square at [10, 8, 26, 24) (x0, y0,
    x1, y1), annotated with a polygon."""
    dicts = []
    for i in range(n):
        img = np.zeros((40, 48, 3), np.uint8)
        img[:] = BG
        img[8:24, 10 + i:26 + i] = OBJ
        path = str(tmp_path / f"{i}.png")
        cv2.imwrite(path, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        poly = [10 + i, 8, 26 + i, 8, 26 + i, 24, 10 + i, 24]
        dicts.append({"file_name": path, "height": 40, "width": 48, "annotations": [
            {"id": i + 1, "bbox": [10 + i, 8, 16, 16], "bbox_mode": BoxMode.XYWH_ABS,
             "category_id": 0, "segmentation": [poly]}]})
    return dicts


def test_annotation_mask_formats_agree():
    ref = np.zeros((12, 10), np.uint8)
    ref[2:7, 3:9] = 1
    rle = mask_util.encode(np.asfortranarray(ref))
    compressed = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    col = ref.flatten(order="F")  # uncompressed RLE: run lengths in column-major order from 0
    runs, cur, n = [], 0, 0
    for v in col:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    polygon = [[3, 2, 9, 2, 9, 7, 3, 7]]
    for seg in (compressed, {"size": [12, 10], "counts": runs}, polygon):
        m = annotation_mask({"segmentation": seg}, 12, 10)
        assert m.dtype == bool and m.shape == (12, 10)
        assert np.array_equal(m, ref.astype(bool)), seg
    with pytest.raises(DatasetFormatError, match=r"a\.png: annotation 7 has no 'segmentation'"):
        annotation_mask({"id": 7, "bbox": [0, 0, 1, 1]}, 12, 10, "a.png")


def test_inpainting_removes_the_object():
    img = np.zeros((40, 40, 3), np.uint8)
    img[:] = BG
    mask = np.zeros((40, 40), bool)
    mask[12:28, 12:28] = True
    img[mask] = OBJ
    out = inpainted_background(img, [mask])
    assert np.abs(out.astype(int) - np.array(BG)).max() <= 4
    assert inpainted_background(img, []) is img
    patches = background_patches(out, [16.0], 8, 5, np.random.default_rng(0))
    assert patches.shape == (5, 8, 8, 3) and patches.dtype == np.uint8


def test_swap_keeps_the_object_and_replaces_the_rest():
    img = torch.full((3, 6, 6), 200, dtype=torch.uint8)
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[1:4, 2:5] = True
    bank = torch.stack([torch.full((3, 6, 6), 7, dtype=torch.uint8)])
    out = BackgroundSwap(bank, 1.0)(img, mask)
    assert torch.all(out[:, mask] == 200) and torch.all(out[:, ~mask] == 7)
    assert torch.equal(BackgroundSwap(bank, 0.0)(img, mask), img)
    torch.manual_seed(0)
    swap = BackgroundSwap(bank, 0.3)
    rate = np.mean([not torch.equal(swap(img, mask), img) for _ in range(2000)])
    assert abs(rate - 0.3) < 0.04
    with pytest.raises(ValueError, match="BACKGROUND_SWAP_PROB"):
        BackgroundSwap(bank, 1.5)


def test_crop_masks_align_with_crops(tmp_path):
    dicts = _square_world(tmp_path)
    images, labels = crops_from_dicts(dicts, 20, context=0.25)
    masks, bank = masks_and_backgrounds(dicts, 20, context=0.25, patches_per_image=3)
    assert masks.shape == (2, 20, 20) and masks.dtype == bool
    assert bank.shape == (6, 20, 20, 3)
    # object coverage of each crop pixel, from its colour (the resize blends OBJ and BG)
    d = np.array(OBJ, float) - np.array(BG, float)
    cover = ((images.astype(float) - np.array(BG)) @ d) / (d @ d)
    clear = np.abs(cover - 0.5) > 0.1
    assert np.array_equal(masks[clear], cover[clear] > 0.5)
    assert 0.35 < masks.mean() < 0.55  # the object is the central 2/3 (context 0.25 each side)
    # no object colour is left in the background bank
    assert np.abs(bank.astype(int) - np.array(BG)).max() <= 4


def test_swapped_views_in_the_dataset(tmp_path):
    dicts = _square_world(tmp_path, n=1)
    images, labels = crops_from_dicts(dicts, 20, context=0.25)
    masks, bank = masks_and_backgrounds(dicts, 20, context=0.25)
    bank[:] = 0  # black backgrounds make the swap visible
    t = lambda cfg_aug: build_transforms(cfg_aug, 20, "eval")  # noqa: E731
    cfg = build_pretrain_config("", [])
    s = SampleSet(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                  torch.as_tensor(labels), torch.as_tensor(labels), ["square"],
                  masks=torch.from_numpy(masks),
                  backgrounds=torch.from_numpy(bank).permute(0, 3, 1, 2).contiguous())
    ds = ViewDataset(s, t(cfg.PRETRAIN.AUG), t(cfg.PRETRAIN.AUG), BackgroundSwap(s.backgrounds, 1))
    out = ds[0]
    black = (torch.zeros(3) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224,
                                                                                   0.225])
    m = torch.from_numpy(masks[0])
    for view in (out["img_q"], out["img_k"]):
        assert torch.allclose(view[:, ~m], black[:, None], atol=1e-5)
    with pytest.raises(ValueError, match="instance masks"):
        ViewDataset(SampleSet(s.images, s.labels, s.labels, ["square"]), t(cfg.PRETRAIN.AUG),
                    None, BackgroundSwap(s.backgrounds, 1))


def test_masks_need_crops_of_an_annotated_dataset(tiny_world):
    cfg = build_pretrain_config("", _opts("/tmp/unused", "pcl") + ["PRETRAIN.DATA.MODE", "images"])
    with pytest.raises(DatasetFormatError, match="PRETRAIN.DATA.MODE 'crops'"):
        load_sample_set(cfg.PRETRAIN.DATA, masks=True)


def test_training_with_background_swap(tmp_path, tiny_world):
    opts = _opts(tmp_path, "pcl", epochs=1) + ["PRETRAIN.AUG.BACKGROUND_SWAP_PROB", "0.5"]
    cfg = build_pretrain_config("", opts)
    s = load_sample_set(cfg.PRETRAIN.DATA, seed=1, masks=True)
    assert s.masks.shape == (len(s), 20, 20)
    assert len(s.backgrounds) == 4 * len(DatasetCatalog.get(tiny_world["train"]))
    keep = torch.arange(32)
    small = SampleSet(s.images[keep], s.labels[keep], s.clean_labels[keep], s.class_names,
                      s.class_frequency, s.masks[keep], s.backgrounds)
    history = PretrainRunner(cfg, small).train()
    assert len(history) == 1 and np.isfinite(history[0]["loss_inst"])
    with pytest.raises(ValueError, match="BACKGROUND_SWAP_PROB > 0 needs"):
        PretrainRunner(cfg, SampleSet(small.images, small.labels, small.clean_labels,
                                      small.class_names))
