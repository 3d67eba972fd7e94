# Copyright (c) det_ext authors.
"""Conversion of PCL / MoPro / MoCo / ICCL / torchvision ResNet checkpoints into Detectron2 pickles.

The renaming rules follow the MoCo and Detectron2 converters (spec ``backbones.md`` §5): keep the
query encoder (never ``encoder_k``), drop heads (``fc``, ``fc1``, ``fc2``, ``classifier``), queues
and prototypes, ``conv1/bn1`` -> ``stem.conv1(.norm)``, ``layerN`` -> ``res{N+1}``, ``bnK`` ->
``convK.norm``, ``downsample.0/1`` -> ``shortcut(.norm)``. The result is checked against the
parameter names and shapes of a Detectron2 ResNet of the detected depth.
"""
from __future__ import annotations

import dataclasses
import logging
import pickle
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from det_ext.utils.errors import DetExtInputError
from det_ext.utils.io import atomic_open

__all__ = [
    "CheckpointFormatError", "ConversionReport", "FORMAT_PREFIXES", "load_checkpoint_state_dict",
    "detect_prefix", "extract_backbone", "rename_torchvision_to_d2", "infer_resnet_depth",
    "detectron2_resnet_shapes", "verify_coverage", "convert_checkpoint", "write_d2_pickle",
]

logger = logging.getLogger(__name__)


class CheckpointFormatError(DetExtInputError, ValueError):
    """A checkpoint cannot be read or does not hold a (complete) ResNet backbone."""


# Prefixes tried, in order, for each --format ("auto" tries all). PCL, MoPro and MoCo save the
# DDP-wrapped MoCo model (``module.encoder_q.``); a non-DDP run of such code gives ``encoder_q.``;
# a DDP-wrapped plain classifier gives ``module.``; torchvision files have no prefix.
_ALL_PREFIXES = ("module.encoder_q.", "encoder_q.", "module.", "")
FORMAT_PREFIXES: Dict[str, Tuple[str, ...]] = {
    "auto": _ALL_PREFIXES,
    "pcl": ("module.encoder_q.", "encoder_q."),
    "mopro": ("module.encoder_q.", "encoder_q."),
    "moco": ("module.encoder_q.", "encoder_q."),
    # ICCL has no published code or checkpoint format: accept any of the generic layouts.
    "iccl": _ALL_PREFIXES,
    "torchvision": ("", "module."),
}
# Top-level names (after the prefix) that are heads or method state, never backbone weights.
_DROPPED_HEADS = ("fc", "fc1", "fc2", "classifier", "queue", "queue_ptr", "prototypes",
                  "centroids")
_BACKBONE_KEY = re.compile(r"^(conv1\.|bn1\.|layer[1-4]\.)")
_DEPTHS = {(2, 2, 2, 2, False): 18, (3, 4, 6, 3, False): 34, (3, 4, 6, 3, True): 50,
           (3, 4, 23, 3, True): 101, (3, 8, 36, 3, True): 152}


@dataclasses.dataclass
class ConversionReport:
    """What a conversion kept, dropped and checked.

    Attributes:
        prefix (str): the key prefix the backbone was read from.
        depth (int): the ResNet depth inferred from the block counts.
        covered (list[str]): Detectron2 parameter/buffer names present with the right shape.
        missing (list[str]): Detectron2 names the checkpoint lacks.
        mismatched (list[str]): ``name: checkpoint shape vs expected shape`` entries.
        unexpected (list[str]): converted names that the Detectron2 ResNet does not have.
        dropped (list[str]): checkpoint keys left out (heads, key encoder, queue, prototypes ...).
    """

    prefix: str
    depth: int
    covered: List[str]
    missing: List[str]
    mismatched: List[str]
    unexpected: List[str]
    dropped: List[str]

    @property
    def complete(self) -> bool:
        return not (self.missing or self.mismatched or self.unexpected)

    def summary(self) -> str:
        total = len(self.covered) + len(self.missing) + len(self.mismatched)
        lines = [f"prefix '{self.prefix}', ResNet-{self.depth}: {len(self.covered)}/{total} "
                 f"Detectron2 backbone entries covered with the right shape; "
                 f"{len(self.dropped)} checkpoint keys dropped"]
        for title, names in (("missing", self.missing), ("shape mismatch", self.mismatched),
                             ("unexpected", self.unexpected)):
            if names:
                shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
                lines.append(f"  {title} ({len(names)}): {shown}")
        return "\n".join(lines)


def load_checkpoint_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Reads a checkpoint file and returns its flat state dict.

    Accepts ``{'state_dict': ...}`` (PCL, MoPro, MoCo, our pre-training), ``{'model': ...}`` and
    plain state dicts (torchvision). Raises :class:`CheckpointFormatError` naming ``path``
    otherwise.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointFormatError(f"{path}: checkpoint file not found") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt files
        if isinstance(e, pickle.UnpicklingError):
            msg = ("corrupted, not written by torch.save, or holding Python objects other than "
                   "tensors and containers, which safe (weights_only) loading refuses")
        else:
            msg = str(e).splitlines()[0][:200] if str(e) else "unreadable"
        raise CheckpointFormatError(
            f"{path}: cannot be read as a PyTorch checkpoint ({type(e).__name__}: {msg})") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointFormatError(f"{path}: holds no state dict (expected a dict of tensors, "
                                    f"or one under 'state_dict' or 'model')")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointFormatError(f"{path}: the state dict holds no tensors")
    return state


def detect_prefix(keys: List[str], fmt: str = "auto", path: str = "checkpoint") -> str:
    """The first prefix of ``FORMAT_PREFIXES[fmt]`` under which ResNet backbone keys exist."""
    if fmt not in FORMAT_PREFIXES:
        raise CheckpointFormatError(f"--format: unknown format '{fmt}' "
                                    f"(choose from {', '.join(FORMAT_PREFIXES)})")
    for prefix in FORMAT_PREFIXES[fmt]:
        if any(k.startswith(prefix) and _BACKBONE_KEY.match(k[len(prefix):]) for k in keys):
            return prefix
    sample = ", ".join(sorted(keys)[:5])
    raise CheckpointFormatError(
        f"{path}: no ResNet backbone keys (conv1., bn1., layer1-4.) under any prefix expected for "
        f"format '{fmt}' ({', '.join(repr(p) for p in FORMAT_PREFIXES[fmt])}); not a ResNet "
        f"checkpoint? First keys: {sample}")


def extract_backbone(state: Mapping[str, torch.Tensor], prefix: str
                     ) -> Tuple["OrderedDict[str, torch.Tensor]", List[str]]:
    """Selects torchvision-named backbone tensors under ``prefix``.

    Returns:
        (OrderedDict, list[str]): backbone tensors with the prefix stripped, and the dropped keys.
    """
    kept: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    dropped = []
    for key, value in state.items():
        rest = key[len(prefix):] if key.startswith(prefix) else None
        if rest is None or rest.split(".")[0] in _DROPPED_HEADS or not _BACKBONE_KEY.match(rest):
            dropped.append(key)
        else:
            kept[rest] = value
    return kept, dropped


def rename_torchvision_to_d2(name: str) -> str:
    """Maps one torchvision ResNet name to Detectron2's (e.g. ``layer1.0.downsample.1.running_var``
    -> ``res2.0.shortcut.norm.running_var``, ``bn1.weight`` -> ``stem.conv1.norm.weight``)."""
    if "layer" not in name:
        name = "stem." + name
    for i in range(1, 5):
        name = name.replace(f"layer{i}", f"res{i + 1}")
    for i in range(1, 4):
        name = name.replace(f"bn{i}", f"conv{i}.norm")
    name = name.replace("downsample.0", "shortcut")
    return name.replace("downsample.1", "shortcut.norm")


def infer_resnet_depth(backbone: Mapping[str, torch.Tensor], path: str = "checkpoint") -> int:
    """ResNet depth from the number of blocks per stage and the block type (conv3 = bottleneck)."""
    counts = []
    for stage in range(1, 5):
        ids = {int(m.group(1)) for k in backbone
               for m in [re.match(rf"layer{stage}\.(\d+)\.", k)] if m}
        counts.append(max(ids) + 1 if ids else 0)
    bottleneck = any(re.match(r"layer\d\.\d+\.conv3\.", k) for k in backbone)
    depth = _DEPTHS.get((*counts, bottleneck))
    if depth is None:
        raise CheckpointFormatError(
            f"{path}: blocks per stage {counts} ({'bottleneck' if bottleneck else 'basic'} blocks) "
            f"match no ResNet depth (18/34/50/101/152); incomplete or not a ResNet")
    return depth


def detectron2_resnet_shapes(depth: int) -> Dict[str, Tuple[int, ...]]:
    """Names and shapes of every parameter and BN buffer of Detectron2's ResNet-``depth``
    (BN norm, all stages built, torchvision widths: ``RES2_OUT_CHANNELS`` 64 for depth < 50)."""
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    with torch.device("meta"):
        model = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def verify_coverage(converted: Mapping[str, np.ndarray], expected: Mapping[str, Tuple[int, ...]],
                    prefix: str, depth: int, dropped: List[str]) -> ConversionReport:
    """Compares converted names/shapes with a Detectron2 ResNet's."""
    covered, missing, mismatched = [], [], []
    for name, shape in expected.items():
        if name not in converted:
            missing.append(name)
        elif tuple(converted[name].shape) != tuple(shape):
            mismatched.append(f"{name}: {tuple(converted[name].shape)} vs {tuple(shape)}")
        else:
            covered.append(name)
    unexpected = [k for k in converted if k not in expected]
    return ConversionReport(prefix, depth, covered, missing, mismatched, unexpected, dropped)


def write_d2_pickle(model: Mapping[str, np.ndarray], out_path: str, author: str) -> None:
    """Writes ``{'model', '__author__', 'matching_heuristics': True}`` atomically (spec §5.3)."""
    if author == "Caffe2":  # Detectron2 would apply Caffe2 renaming to the names
        raise CheckpointFormatError("__author__ must not be 'Caffe2'")
    blob = {"model": dict(model), "__author__": author, "matching_heuristics": True}
    with atomic_open(out_path, "wb") as f:
        pickle.dump(blob, f)


def convert_checkpoint(in_path: str, out_path: Optional[str], fmt: str = "auto",
                       allow_partial: bool = False, prefix: Optional[str] = None,
                       author: Optional[str] = None) -> ConversionReport:
    """Converts a ResNet checkpoint into a Detectron2 pickle and verifies its coverage.

    Args:
        in_path (str): PCL/MoPro/MoCo/ICCL ``.pth(.tar)`` or a torchvision state dict.
        out_path (str or None): the ``.pkl`` to write (None: only check).
        fmt (str): one of :data:`FORMAT_PREFIXES` ("auto" detects the prefix).
        allow_partial (bool): write even if some Detectron2 entries are missing or mismatched.
        prefix (str or None): explicit key prefix, overriding ``fmt``'s candidates.
        author (str or None): ``__author__`` in the pickle (default: the format name).

    Returns:
        ConversionReport: coverage details (also logged).

    Raises:
        CheckpointFormatError: unreadable, not a ResNet, or incomplete without ``allow_partial``.
    """
    state = load_checkpoint_state_dict(in_path)
    if prefix is None:
        prefix = detect_prefix(list(state), fmt, in_path)
    backbone, dropped = extract_backbone(state, prefix)
    if not backbone:
        raise CheckpointFormatError(f"{in_path}: no ResNet backbone keys under prefix '{prefix}'")
    depth = infer_resnet_depth(backbone, in_path)
    converted = OrderedDict((rename_torchvision_to_d2(k), v.detach().cpu().numpy())
                            for k, v in backbone.items())
    report = verify_coverage(converted, detectron2_resnet_shapes(depth), prefix, depth, dropped)
    logger.info("%s: %s", in_path, report.summary())
    if not report.complete and not allow_partial:
        raise CheckpointFormatError(f"{in_path}: incomplete or mismatched backbone "
                                    f"(use --allow-partial to write it anyway): {report.summary()}")
    if out_path:
        write_d2_pickle(converted, out_path, author or (fmt if fmt != "auto" else "det_ext"))
    return report
