# Copyright (c) det_ext authors.
"""Drawing predictions of a model on dataset images (PNG grids for demos and reports)."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.structures import Instances
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

from det_ext.utils.io import atomic_open

__all__ = ["predict_image", "draw_prediction_grid"]


@torch.no_grad()
def predict_image(cfg: CfgNode, model: torch.nn.Module, image_bgr: np.ndarray):
    """Runs ``model`` on one BGR image with the config's test-time resizing.

    Args:
        image_bgr (np.ndarray): uint8 (H, W, 3) in BGR order.

    Returns:
        Instances: predictions in the original image's coordinates, on the CPU.
    """
    h, w = image_bgr.shape[:2]
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    image = aug.get_transform(image_bgr).apply_image(image_bgr)
    if cfg.INPUT.FORMAT == "RGB":
        image = image[:, :, ::-1]
    tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))
    was_training = model.training
    model.eval()
    try:
        out = model([{"image": tensor, "height": h, "width": w}])[0]["instances"]
    finally:
        model.train(was_training)
    return out.to("cpu")


def draw_prediction_grid(cfg: CfgNode, model: torch.nn.Module, dataset_dicts: Sequence[dict],
                         metadata: Union[str, Metadata], out_path: str, score_thresh: float = 0.5,
                         columns: int = 3, scale: float = 3.0,
                         keep: Optional[Callable[[Instances], torch.Tensor]] = None) -> str:
    """Draws predicted masks, boxes and labels on a few images and saves them as one PNG grid.

    Args:
        dataset_dicts (Sequence[dict]): Detectron2 dicts of the images to draw (``file_name``).
        metadata (str or Metadata): a dataset name, or metadata, providing the class names.
        out_path (str): PNG path, written atomically.
        score_thresh (float): predictions below this score are not drawn.
        keep (callable or None): maps the predictions of an image (N instances) to a bool tensor
            (N,) selecting those to draw, after the score threshold.

    Returns:
        str: ``out_path``.
    """
    if isinstance(metadata, str):
        metadata = MetadataCatalog.get(metadata)
    tiles: List[np.ndarray] = []
    for d in dataset_dicts:
        image = read_image(d["file_name"], format="BGR")
        inst = predict_image(cfg, model, image)
        inst = inst[inst.scores >= score_thresh]
        if keep is not None:
            inst = inst[keep(inst)]
        # IMAGE_BW keeps the objects' own colours visible (the background turns grey).
        vis = Visualizer(image[:, :, ::-1], metadata, scale=scale,
                         instance_mode=ColorMode.IMAGE_BW).draw_instance_predictions(inst)
        tiles.append(vis.get_image())
    if not tiles:
        raise ValueError("draw_prediction_grid needs at least one image")
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    rows = (len(tiles) + columns - 1) // columns
    grid = np.full((rows * h, columns * w, 3), 255, dtype=np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * h : r * h + t.shape[0], c * w : c * w + t.shape[1]] = t
    with atomic_open(out_path, "wb") as f:
        Image.fromarray(grid).save(f, format="PNG")
    return out_path
