# Copyright (c) det_ext authors.
"""Builds a pre-training model (PCL, MoPro, ICCL or plain MoCo) from a pre-training config."""
from __future__ import annotations

from detectron2.utils.registry import Registry

from det_ext.utils.errors import ConfigInputError

from .encoder import ResNetEncoder
from .iccl import ICCL
from .moco import MomentumContrast
from .mopro import MoPro
from .pcl import PCL

__all__ = ["PRETRAIN_METHOD_REGISTRY", "build_pretrain_model", "METHODS_WITH_LABELS"]

PRETRAIN_METHOD_REGISTRY = Registry("PRETRAIN_METHOD")
PRETRAIN_METHOD_REGISTRY.__doc__ = "Pre-training methods: fn(cfg, num_classes) -> nn.Module."
METHODS_WITH_LABELS = ("mopro", "iccl")


def _engine_kwargs(cfg) -> dict:
    m = cfg.PRETRAIN.MOCO
    return dict(dim=cfg.PRETRAIN.MODEL.DIM, queue_size=m.QUEUE_SIZE, momentum=m.MOMENTUM,
                temperature=m.TEMPERATURE, shuffle_splits=m.SHUFFLE_BN_SPLITS)


def _encoder(cfg, num_classes: int = 0) -> ResNetEncoder:
    m = cfg.PRETRAIN.MODEL
    return ResNetEncoder(m.ARCH, m.HEAD, m.DIM, num_classes)


@PRETRAIN_METHOD_REGISTRY.register()
def moco(cfg, num_classes: int):
    return MomentumContrast(_encoder(cfg), **_engine_kwargs(cfg))


@PRETRAIN_METHOD_REGISTRY.register()
def pcl(cfg, num_classes: int):
    return PCL(_encoder(cfg), num_neg_protos=cfg.PRETRAIN.PCL.NUM_NEG_PROTOS,
               **_engine_kwargs(cfg))


@PRETRAIN_METHOD_REGISTRY.register()
def mopro(cfg, num_classes: int):
    c = cfg.PRETRAIN.MOPRO
    return MoPro(_encoder(cfg, num_classes), num_classes, proto_momentum=c.PROTO_MOMENTUM,
                 w_inst=c.W_INST, w_proto=c.W_PROTO, start_clean_epoch=c.START_CLEAN_EPOCH,
                 pseudo_th=c.PSEUDO_TH, alpha=c.ALPHA, logit_adjustment=c.LOGIT_ADJUSTMENT,
                 **_engine_kwargs(cfg))


@PRETRAIN_METHOD_REGISTRY.register()
def iccl(cfg, num_classes: int):
    c = cfg.PRETRAIN.ICCL
    return ICCL(_encoder(cfg, num_classes), num_classes, mix=c.MIX, beta_alpha=c.BETA_ALPHA,
                icc_temperature=c.TEMPERATURE, weight=c.WEIGHT, warmup_epochs=c.WARMUP_EPOCHS,
                centroid_momentum=c.CENTROID_MOMENTUM, w_inst=c.W_INST, w_ce=c.W_CE,
                mixed_forward_float32=c.MIXED_FORWARD_FLOAT32, **_engine_kwargs(cfg))


def build_pretrain_model(cfg, num_classes: int = 0):
    """The model of ``cfg.PRETRAIN.METHOD``; MoPro and ICCL need the ``"mopro"`` head (classifier)
    and ``num_classes`` > 0."""
    method = cfg.PRETRAIN.METHOD
    if method not in PRETRAIN_METHOD_REGISTRY:
        raise ConfigInputError(f"PRETRAIN.METHOD: unknown method '{method}' "
                               f"(pcl, mopro, iccl, moco)")
    if method in METHODS_WITH_LABELS:
        if cfg.PRETRAIN.MODEL.HEAD != "mopro":
            raise ConfigInputError(f"PRETRAIN.MODEL.HEAD: method '{method}' needs the 'mopro' head "
                                   f"(classifier + fc1/fc2), got '{cfg.PRETRAIN.MODEL.HEAD}'")
        num_classes = cfg.PRETRAIN.MODEL.NUM_CLASSES or num_classes
        if num_classes <= 0:
            raise ConfigInputError(f"PRETRAIN.MODEL.NUM_CLASSES: method '{method}' needs labels")
    return PRETRAIN_METHOD_REGISTRY.get(method)(cfg, num_classes)
