# Copyright (c) det_ext authors.
"""Reading and writing ALBEF checkpoints.

Two layouts are accepted: the pre-training one (``{"model": state, "optimizer", "lr_scheduler",
"config", "epoch"}``) and the fine-tuned one (the state dict itself, e.g. ``refcoco.pth``). Keys
containing ``bert.`` lose that part (``text_encoder.bert.encoder...`` ->
``text_encoder.encoder...``); momentum copies (``*_m``), queues, the MLM head and other extra keys
are ignored; every key the model needs must be present with the right shape, or loading fails with
the list of problems. The architecture is read from the tensors' shapes; head counts, the patch
stride and det_ext's locality switches (:class:`~det_ext.pseudo.albef.AlbefConfig`) come from
``config["det_ext_albef"]`` when the checkpoint records them, else ALBEF's values (heads = width /
64 as in BERT and ViT-B, patch stride = the patch kernel, global attention).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from det_ext.utils.errors import DetExtInputError

from .albef import AlbefConfig, AlbefITM, interpolate_pos_embed

__all__ = [
    "CheckpointError",
    "load_albef_checkpoint",
    "save_albef_checkpoint",
    "albef_config_from_state",
]

logger = logging.getLogger(__name__)

_IGNORED = re.compile(r"(_m\.|_m$|queue|queue_ptr|^text_encoder\.cls\.|\.position_ids$)")


class CheckpointError(DetExtInputError):
    """A checkpoint file is unreadable, corrupted, or not an ALBEF checkpoint."""


def _read(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupted file
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(obj).__name__}")
    config = obj.get("config") if isinstance(obj.get("config"), dict) else {}
    state = obj["model"] if "model" in obj else obj
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no tensors in the checkpoint's state dict")
    state = {k.replace("bert.", ""): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return state, config


def albef_config_from_state(
    state: Dict[str, torch.Tensor],
    path: str = "checkpoint",
    recorded: Optional[Dict[str, Any]] = None,
) -> AlbefConfig:
    """Infers an :class:`AlbefConfig` from an ALBEF state dict (``bert.`` already removed).

    Args:
        recorded (dict or None): ``config["det_ext_albef"]`` of a det_ext checkpoint (head counts,
            patch stride, locality switches); None for ALBEF's own checkpoints.

    Raises:
        CheckpointError: a key needed to infer the architecture is missing (e.g. a checkpoint of
            another model).
    """
    needed = (
        "visual_encoder.pos_embed",
        "visual_encoder.patch_embed.proj.weight",
        "text_encoder.embeddings.word_embeddings.weight",
        "text_encoder.embeddings.position_embeddings.weight",
        "text_encoder.encoder.layer.0.intermediate.dense.weight",
        "itm_head.weight",
    )
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not an ALBEF checkpoint, missing keys {missing}")
    recorded = recorded or {}
    vis_depth = 1 + max(
        int(m.group(1)) for k in state if (m := re.match(r"visual_encoder\.blocks\.(\d+)\.", k))
    )
    layers = sorted(
        {
            int(m.group(1))
            for k in state
            if (m := re.match(r"text_encoder\.encoder\.layer\.(\d+)\.", k))
        }
    )
    cross = [
        i
        for i in layers
        if f"text_encoder.encoder.layer.{i}.crossattention.self.query.weight" in state
    ]
    patch_w = state["visual_encoder.patch_embed.proj.weight"]
    width, kernel = patch_w.shape[0], patch_w.shape[-1]
    patch = int(recorded.get("patch_size", kernel))
    side = int(round((state["visual_encoder.pos_embed"].shape[1] - 1) ** 0.5))
    hidden = state["text_encoder.embeddings.word_embeddings.weight"].shape[1]
    mlp_hidden = state.get(
        "visual_encoder.blocks.0.mlp.fc1.weight", torch.empty(4 * width, 1)
    ).shape[0]
    proj = state.get("vision_proj.weight")
    return AlbefConfig(
        image_size=side * patch,
        patch_size=patch,
        vision_width=width,
        vision_depth=vis_depth,
        vision_heads=int(recorded.get("vision_heads", max(1, width // 64))),
        mlp_ratio=mlp_hidden / width,
        vocab_size=state["text_encoder.embeddings.word_embeddings.weight"].shape[0],
        hidden_size=hidden,
        num_layers=len(layers),
        num_heads=int(recorded.get("num_heads", max(1, hidden // 64))),
        intermediate_size=state["text_encoder.encoder.layer.0.intermediate.dense.weight"].shape[0],
        fusion_layer=min(cross) if cross else len(layers),
        max_position=state["text_encoder.embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state.get(
            "text_encoder.embeddings.token_type_embeddings.weight", torch.empty(2, 1)
        ).shape[0],
        embed_dim=0 if proj is None else proj.shape[0],
        patch_kernel=kernel if kernel != patch else 0,
        vision_local_radius=int(recorded.get("vision_local_radius", -1)),
        fusion_image_cls=bool(recorded.get("fusion_image_cls", True)),
        text_window=int(recorded.get("text_window", -1)),
        fusion_window=int(recorded.get("fusion_window", -1)),
    )


def load_albef_checkpoint(
    path: str, image_size: Optional[int] = None, with_itc: bool = False
) -> Tuple[AlbefITM, Dict[str, Any]]:
    """Builds an :class:`AlbefITM` from an ALBEF checkpoint.

    Args:
        path (str): ``.pth`` file in either layout.
        image_size (int or None): input resolution; the position embedding is resized (bicubic)
            when it differs from the checkpoint's. None: the checkpoint's resolution.
        with_itc (bool): also load ``vision_proj``/``text_proj``/``temp`` (needed for training).

    Returns:
        tuple: (model in eval mode, the checkpoint's ``config`` dict).

    Raises:
        CheckpointError: unreadable file, another model's checkpoint, missing keys or wrong shapes.
    """
    state, config = _read(path)
    cfg = albef_config_from_state(state, path, config.get("det_ext_albef"))
    if not with_itc:
        cfg.embed_dim = 0
    if image_size is not None and image_size != cfg.image_size:
        if image_size % cfg.patch_size:
            raise CheckpointError(
                f"image size {image_size} is not a multiple of the patch size " f"{cfg.patch_size}"
            )
        state = dict(state)
        state["visual_encoder.pos_embed"] = interpolate_pos_embed(
            state["visual_encoder.pos_embed"], (image_size // cfg.patch_size) ** 2
        )
        cfg.image_size = image_size
    model = AlbefITM(cfg)
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state)
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    )
    if missing or wrong:
        raise CheckpointError(
            f"{path}: incompatible ALBEF checkpoint: missing keys "
            f"{_short(missing)}, wrong shapes {_short(wrong)}"
        )
    model.load_state_dict({k: state[k] for k in expected})
    ignored = [k for k in state if k not in expected]
    logger.info(
        "Loaded ALBEF checkpoint %s (%d tensors; %d extra keys ignored, e.g. momentum "
        "and queues)",
        path,
        len(expected),
        len(ignored),
    )
    return model.eval(), config


def _short(items: Sequence[str], n: int = 8) -> str:
    items = list(items)
    return (
        "[]"
        if not items
        else str(items[:n])[:-1] + (f", ... {len(items) - n} more]" if len(items) > n else "]")
    )


def save_albef_checkpoint(
    model: AlbefITM,
    path: str,
    config: Optional[Dict[str, Any]] = None,
    pretrain_format: bool = True,
    extra: Optional[Dict[str, Any]] = None,
) -> None:
    """Writes ``model`` with ALBEF's key names (``text_encoder.bert.*``) atomically.

    Args:
        model (AlbefITM): the model.
        path (str): destination ``.pth``.
        config (dict or None): stored under ``"config"``; the head counts are added under
            ``config["det_ext_albef"]`` so that the loader rebuilds the same architecture.
        pretrain_format (bool): ``{"model": state, "config": ...}`` (True) or the bare state
            (False).
        extra (dict or None): more top-level entries (pre-training format only).
    """
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith("text_encoder."):
            k = "text_encoder.bert." + k[len("text_encoder.") :]
        state[k] = v.detach().cpu()
    config = dict(config or {})
    config["det_ext_albef"] = {
        "vision_heads": model.cfg.vision_heads,
        "num_heads": model.cfg.num_heads,
        "patch_size": model.cfg.patch_size,
        "vision_local_radius": model.cfg.vision_local_radius,
        "fusion_image_cls": model.cfg.fusion_image_cls,
        "text_window": model.cfg.text_window,
        "fusion_window": model.cfg.fusion_window,
    }
    obj: Dict[str, Any] = (
        {"model": state, "config": config, **(extra or {})} if pretrain_format else state
    )
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)
