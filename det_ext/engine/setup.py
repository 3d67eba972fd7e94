# Copyright (c) det_ext authors.
"""Building a validated config from command-line arguments (the ``setup`` of every tool)."""
from __future__ import annotations

import argparse
import os
import re

from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from det_ext.config import add_det_ext_config
from det_ext.data.datasets import prepare_datasets
from det_ext.utils.errors import ConfigInputError

__all__ = ["build_config", "setup", "check_weights_file"]

_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: ([^\s']+)")


def _reraise_config_error(source: str, err: Exception) -> None:
    match = _UNKNOWN_KEY.search(str(err))
    if match:
        raise ConfigInputError(f"{source}: unknown config key '{match.group(1)}'") from None
    raise ConfigInputError(f"{source}: {err}") from None


def check_weights_file(weights: str) -> None:
    """Fails early, naming the key, when ``MODEL.WEIGHTS`` is a local path that does not exist."""
    if not weights or "://" in weights:
        return
    if not os.path.isfile(os.path.expanduser(weights)):
        raise ConfigInputError(f"MODEL.WEIGHTS: weight file not found: {weights}")


def build_config(config_file: str = "", opts: list | None = None) -> CfgNode:
    """Detectron2 config with det_ext keys, merged from ``config_file`` and ``opts``.

    Unknown keys, a missing config file and a missing local weight file raise
    :class:`ConfigInputError` naming the file and key. The datasets named in ``DATASETS.TRAIN`` and
    ``DATASETS.TEST`` are prepared (LT-Shapes generated, other files checked).

    Args:
        config_file (str): YAML config (may use ``_BASE_``); empty for the defaults.
        opts (list[str] or None): ``KEY VALUE`` pairs overriding the file.

    Returns:
        CfgNode: the frozen config.
    """
    cfg = get_cfg()
    add_det_ext_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise ConfigInputError(f"{config_file}: config file not found")
        try:
            cfg.merge_from_file(config_file)
        except (KeyError, ValueError, AssertionError, TypeError) as e:
            _reraise_config_error(config_file, e)
    if opts:
        try:
            cfg.merge_from_list(list(opts))
        except (KeyError, ValueError, AssertionError, TypeError) as e:
            _reraise_config_error("command-line opts", e)
    check_weights_file(cfg.MODEL.WEIGHTS)
    prepare_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    cfg.freeze()
    return cfg


def setup(args: argparse.Namespace) -> CfgNode:
    """``build_config`` from Detectron2's standard arguments, then ``default_setup`` (logging,
    output folder, seeds, config dump)."""
    cfg = build_config(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="det_ext")
    return cfg
