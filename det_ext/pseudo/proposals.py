# Copyright (c) det_ext authors.
"""Proposal sources: a Detectron2 model (RPN or class-agnostic detector) or a precomputed file.

Precomputed file: JSON ``{"<image_id>": [[x0, y0, x1, y1, score], ...]}`` in original image pixels
(:func:`dump_proposals` writes it from any source).
"""

from __future__ import annotations

import logging
import os
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import transforms as T
from detectron2.layers import batched_nms
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import detector_postprocess

from det_ext.utils.errors import ConfigInputError, DatasetFormatError
from det_ext.utils.io import atomic_write_json, read_json_input

__all__ = [
    "ProposalSource",
    "NoProposals",
    "ModelProposals",
    "PrecomputedProposals",
    "build_proposal_source",
    "dump_proposals",
]

logger = logging.getLogger(__name__)


class ProposalSource:
    """Gives [K, 5] XYXY + score proposals (float32 ndarray) per image."""

    def __call__(self, image_ids: Sequence[int], images: Sequence[np.ndarray]) -> List[np.ndarray]:
        raise NotImplementedError


class NoProposals(ProposalSource):
    """No proposals at all (for computing activation maps only)."""

    def __call__(self, image_ids, images):
        return [np.zeros((0, 5), np.float32) for _ in image_ids]


class PrecomputedProposals(ProposalSource):
    """Proposals read from a JSON file; images absent from it have none."""

    def __init__(self, path: str, topk: int = 0):
        raw = read_json_input(path, "proposal file")
        if not isinstance(raw, dict):
            raise DatasetFormatError(
                f"{path}: expected {{image_id: [[x0, y0, x1, y1, score], ...]}}"
            )
        self.boxes: Dict[str, np.ndarray] = {}
        for k, rows in raw.items():
            arr = (
                np.asarray(rows, dtype=np.float32).reshape(-1, 5)
                if rows
                else np.zeros((0, 5), np.float32)
            )
            self.boxes[str(k)] = arr[:topk] if topk else arr

    def __call__(self, image_ids, images):
        return [self.boxes.get(str(i), np.zeros((0, 5), np.float32)) for i in image_ids]


class ModelProposals(ProposalSource):
    """Proposals from a Detectron2 model.

    Args:
        cfg (CfgNode): the proposal model's config (``MODEL.WEIGHTS`` set).
        mode (str): ``"rpn"``: the model's RPN output (after its NMS); ``"detector"``: the model's
            final detections merged over classes with class-agnostic NMS.
        topk (int): keep the ``topk`` best after NMS (0: all).
        nms_thresh (float): class-agnostic NMS IoU for ``"detector"``.
    """

    def __init__(self, cfg: CfgNode, mode: str = "rpn", topk: int = 100, nms_thresh: float = 0.5):
        if mode not in ("rpn", "detector"):
            raise ConfigInputError(
                f"PSEUDO.PROPOSALS.MODE must be 'rpn' or 'detector', got '{mode}'"
            )
        self.model = build_model(cfg).eval()
        if not cfg.MODEL.WEIGHTS or not os.path.isfile(cfg.MODEL.WEIGHTS):
            raise ConfigInputError(
                f"PSEUDO.PROPOSALS.WEIGHTS: file '{cfg.MODEL.WEIGHTS}' not found"
            )
        DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        if mode == "rpn" and getattr(self.model, "proposal_generator", None) is None:
            raise ConfigInputError("PSEUDO.PROPOSALS.MODE 'rpn' needs a model with an RPN")
        self.mode, self.topk, self.nms = mode, topk, nms_thresh
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.bgr = cfg.INPUT.FORMAT == "BGR"

    @torch.no_grad()
    def __call__(self, image_ids, images):
        inputs = []
        for img in images:
            h, w = img.shape[:2]
            x = img[:, :, ::-1] if self.bgr else img
            x = self.aug.get_transform(x).apply_image(np.ascontiguousarray(x))
            inputs.append(
                {"image": torch.as_tensor(x.transpose(2, 0, 1).copy()), "height": h, "width": w}
            )
        model = self.model
        out = []
        if self.mode == "rpn":
            batched = model.preprocess_image(inputs)
            features = model.backbone(batched.tensor)
            props, _ = model.proposal_generator(batched, features, None)
            for p, inp, size in zip(props, inputs, batched.image_sizes):
                p = detector_postprocess(p, inp["height"], inp["width"])
                boxes = p.proposal_boxes.tensor
                scores = p.objectness_logits.sigmoid()
                out.append(self._pack(boxes, scores))
        else:
            for res in model.inference(inputs, do_postprocess=True):
                inst = res["instances"]
                boxes, scores = inst.pred_boxes.tensor, inst.scores
                keep = batched_nms(
                    boxes, scores, torch.zeros_like(scores, dtype=torch.long), self.nms
                )
                out.append(self._pack(boxes[keep], scores[keep]))
        return out

    def _pack(self, boxes: torch.Tensor, scores: torch.Tensor) -> np.ndarray:
        order = scores.argsort(descending=True)
        if self.topk:
            order = order[: self.topk]
        return torch.cat([boxes[order], scores[order, None]], 1).cpu().numpy().astype(np.float32)


def build_proposal_source(cfg: CfgNode) -> ProposalSource:
    """The proposal source of ``cfg.PSEUDO.PROPOSALS``."""
    c = cfg.PSEUDO.PROPOSALS
    if c.FILE:
        return PrecomputedProposals(c.FILE, c.TOPK)
    if not c.CONFIG_FILE:
        raise ConfigInputError("PSEUDO.PROPOSALS: set FILE (precomputed) or CONFIG_FILE + WEIGHTS")
    from det_ext.config import add_det_ext_config

    pcfg = get_cfg()
    add_det_ext_config(pcfg)
    if not os.path.isfile(c.CONFIG_FILE):
        raise ConfigInputError(f"PSEUDO.PROPOSALS.CONFIG_FILE: file '{c.CONFIG_FILE}' not found")
    pcfg.merge_from_file(c.CONFIG_FILE)
    pcfg.MODEL.WEIGHTS = c.WEIGHTS
    pcfg.MODEL.DEVICE = cfg.PSEUDO.DEVICE
    pcfg.freeze()
    return ModelProposals(pcfg, c.MODE, c.TOPK, c.NMS_THRESH)


def dump_proposals(
    source: ProposalSource, image_ids: Sequence[int], load_image, path: str, batch_size: int = 16
) -> None:
    """Runs ``source`` on images (``load_image(image_id) -> RGB ndarray``) and writes a proposal
    file."""
    result = {}
    for s in range(0, len(image_ids), batch_size):
        ids = list(image_ids[s : s + batch_size])
        for i, p in zip(ids, source(ids, [load_image(i) for i in ids])):
            result[str(i)] = [[round(float(v), 3) for v in row] for row in p]
    atomic_write_json(path, result)
