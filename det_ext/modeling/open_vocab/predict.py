# Copyright (c) det_ext authors.
"""Open-vocabulary inference on single images (the library side of ``tools/predict.py``)."""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from det_ext.utils.io import atomic_open

from .text_encoders import build_text_encoder, default_templates
from .vocabulary import set_vocabulary

__all__ = ["load_open_vocab_model", "apply_vocabulary", "instances_to_records", "draw_instances",
           "filter_instances"]

logger = logging.getLogger(__name__)


def load_open_vocab_model(cfg: CfgNode) -> torch.nn.Module:
    """Builds the model of ``cfg`` and loads ``MODEL.WEIGHTS`` (eval mode)."""
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model.eval()


def apply_vocabulary(cfg: CfgNode, model: torch.nn.Module, names: Sequence[str],
                     embeddings: str = "") -> Metadata:
    """``set_vocabulary`` with an embedding file, or with the config's text encoder
    (``OPEN_VOCAB.TEXT_ENCODER.*``: the encoder the classifier was trained with)."""
    if embeddings:
        return set_vocabulary(model, names, embeddings=embeddings)
    te = cfg.OPEN_VOCAB.TEXT_ENCODER
    encoder = build_text_encoder(te.NAME, te.WEIGHTS, te.MODEL, cfg.MODEL.DEVICE,
                                 pooling=te.POOLING)
    templates = list(te.TEMPLATES) or default_templates(te.NAME)
    return set_vocabulary(model, names, encoder=encoder, templates=templates,
                          cache_dir=te.CACHE_DIR or None)


def instances_to_records(instances: Instances, names: Sequence[str]) -> List[Dict[str, Any]]:
    """``[{"bbox": [x0, y0, x1, y1], "score", "class_id", "class_name"}]`` for JSON output."""
    boxes = instances.pred_boxes.tensor.tolist()
    return [{"bbox": [round(v, 2) for v in b], "score": round(float(s), 4), "class_id": int(c),
             "class_name": names[int(c)]}
            for b, s, c in zip(boxes, instances.scores.tolist(), instances.pred_classes.tolist())]


def draw_instances(image_bgr: np.ndarray, instances: Instances, metadata: Metadata, out_path: str,
                   scale: float = 1.0) -> str:
    """Draws boxes and class names on the image and writes a PNG atomically."""
    vis = Visualizer(image_bgr[:, :, ::-1], metadata, scale=scale)
    image = vis.draw_instance_predictions(instances.to("cpu")).get_image()
    with atomic_open(out_path, "wb") as f:
        Image.fromarray(image).save(f, format="PNG")
    return out_path


def filter_instances(instances: Instances, score_thresh: float,
                     max_dets: Optional[int] = None) -> Instances:
    """Predictions with score >= ``score_thresh`` (at most ``max_dets``, best first)."""
    inst = instances[instances.scores >= score_thresh]
    if max_dets is not None and len(inst) > max_dets:
        inst = inst[torch.argsort(inst.scores, descending=True)[:max_dets]]
    return inst
