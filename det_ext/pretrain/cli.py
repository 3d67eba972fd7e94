# Copyright (c) det_ext authors.
"""Config loading and the main function of ``tools/pretrain_net.py``."""
from __future__ import annotations

import argparse
import os
from typing import List, Optional

import torch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from det_ext.config.pretrain import get_pretrain_cfg
from det_ext.engine.amp import AMP_DTYPES
from det_ext.utils.errors import ConfigInputError
from det_ext.utils.io import atomic_open

__all__ = ["build_pretrain_config", "pretrain_argument_parser", "pretrain_main"]


def build_pretrain_config(config_file: str = "", opts: Optional[List[str]] = None,
                          method: Optional[str] = None):
    """Pre-training config from defaults, a YAML file (may use ``_BASE_``) and ``KEY VALUE`` opts;
    ``method`` overrides ``PRETRAIN.METHOD``. Unknown keys raise :class:`ConfigInputError`."""
    cfg = get_pretrain_cfg()
    try:
        if config_file:
            if not os.path.isfile(config_file):
                raise ConfigInputError(f"{config_file}: config file not found")
            cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts or []))
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        if isinstance(e, ConfigInputError):
            raise
        raise ConfigInputError(f"{config_file or 'opts'}: {e}") from None
    if method:
        cfg.PRETRAIN.METHOD = method
    if cfg.PRETRAIN.METHOD not in ("pcl", "mopro", "iccl", "moco"):
        raise ConfigInputError(f"PRETRAIN.METHOD: unknown method '{cfg.PRETRAIN.METHOD}'")
    if cfg.PRETRAIN.DATA.NOISE_TYPE not in ("symmetric", "prior"):
        raise ConfigInputError(f"PRETRAIN.DATA.NOISE_TYPE: unknown noise type "
                               f"'{cfg.PRETRAIN.DATA.NOISE_TYPE}' (symmetric, prior)")
    if not 0.0 <= cfg.PRETRAIN.AUG.BACKGROUND_SWAP_PROB <= 1.0:
        raise ConfigInputError(f"PRETRAIN.AUG.BACKGROUND_SWAP_PROB: "
                               f"{cfg.PRETRAIN.AUG.BACKGROUND_SWAP_PROB} is not in [0, 1]")
    if cfg.PRETRAIN.MOPRO.LOGIT_ADJUSTMENT < 0:
        raise ConfigInputError(f"PRETRAIN.MOPRO.LOGIT_ADJUSTMENT: "
                               f"{cfg.PRETRAIN.MOPRO.LOGIT_ADJUSTMENT} is negative")
    moco = cfg.PRETRAIN.MOCO
    if moco.TEMPERATURE_SCHEDULE not in ("constant", "cosine"):
        raise ConfigInputError(f"PRETRAIN.MOCO.TEMPERATURE_SCHEDULE: unknown schedule "
                               f"'{moco.TEMPERATURE_SCHEDULE}' (constant, cosine)")
    if moco.TEMPERATURE_SCHEDULE == "cosine":
        low_high = tuple(moco.TEMPERATURE_RANGE)
        if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
            raise ConfigInputError(f"PRETRAIN.MOCO.TEMPERATURE_RANGE: {low_high} is not "
                                   f"(tau_min, tau_max) with 0 < tau_min <= tau_max")
        if moco.TEMPERATURE_PERIOD <= 0:
            raise ConfigInputError(f"PRETRAIN.MOCO.TEMPERATURE_PERIOD: "
                                   f"{moco.TEMPERATURE_PERIOD} is not positive")
    for node in ("MOPRO", "PCL"):
        if cfg.PRETRAIN[node].SAMPLER_EXPONENT < 0:
            raise ConfigInputError(f"PRETRAIN.{node}.SAMPLER_EXPONENT: "
                                   f"{cfg.PRETRAIN[node].SAMPLER_EXPONENT} is negative")
    if cfg.PRETRAIN.SOLVER.AMP.DTYPE not in AMP_DTYPES:
        raise ConfigInputError(f"PRETRAIN.SOLVER.AMP.DTYPE: unknown dtype "
                               f"'{cfg.PRETRAIN.SOLVER.AMP.DTYPE}' "
                               f"({', '.join(sorted(AMP_DTYPES))})")
    cfg.freeze()
    return cfg


def pretrain_argument_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="ResNet pre-training with PCL, MoPro or ICCL")
    p.add_argument("--method", choices=["pcl", "mopro", "iccl", "moco"], default=None,
                   help="overrides PRETRAIN.METHOD of the config")
    p.add_argument("--config", default="", metavar="FILE", help="pre-training YAML config")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT_DIR/checkpoint_last.pth.tar if it exists")
    p.add_argument("--num-gpus", type=int, default=0, help="GPUs per machine (0: CPU)")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0)
    p.add_argument("--dist-url", default="auto")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p


def pretrain_main(args: argparse.Namespace):
    """Trains one process's share; returns the per-epoch loss history."""
    from .train import PretrainRunner

    opts = list(args.opts)
    if args.num_gpus > 0:
        opts += ["DEVICE", f"cuda:{comm.get_local_rank()}"]
    cfg = build_pretrain_config(args.config, opts, args.method)
    if cfg.DEVICE.startswith("cuda"):
        torch.cuda.set_device(torch.device(cfg.DEVICE))
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="det_ext")
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="detectron2")
    if comm.is_main_process():
        with atomic_open(os.path.join(cfg.OUTPUT_DIR, "config.yaml")) as f:
            f.write(cfg.dump())
    runner = PretrainRunner(cfg)
    if args.resume:
        runner.resume()
    return runner.train()
