#!/usr/bin/env python
# Copyright (c) det_ext authors.
"""Trains the tiny ALBEF-style model on LT-Shapes captions (CPU, about 12 minutes).

    python tools/train_tiny_vl.py --out output/pseudo_tiny_vl           # default world
    python tools/train_tiny_vl.py --dataset lt_shapes_seed1_train --out output/tiny_vl_seed1

The checkpoint (``OUT/tiny_albef.pth``, ALBEF pre-training format) is what
``configs/LT-Shapes/pseudo_tiny_albef.yaml`` points to. Rerunning the command resumes.
"""

import argparse
import dataclasses
import logging
import os

from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger

from det_ext.data.datasets import ensure_lt_shapes_generated, register_lt_shapes
from det_ext.data.datasets.lt_shapes import maybe_register_lt_shapes_name
from det_ext.engine import run_cli
from det_ext.pseudo.tiny_vl import TinyVLOptions, train_tiny_vl
from det_ext.utils.errors import ConfigInputError


def main(args: argparse.Namespace) -> None:
    setup_logger(name="det_ext")
    if args.dataset == "lt_shapes_train":
        register_lt_shapes()
    else:
        maybe_register_lt_shapes_name(args.dataset)
    if args.dataset not in MetadataCatalog.list():
        raise ConfigInputError(f"--dataset: unknown LT-Shapes dataset '{args.dataset}'")
    folder = ensure_lt_shapes_generated(args.dataset)
    meta = MetadataCatalog.get(args.dataset)
    opts = TinyVLOptions(
        **{
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(TinyVLOptions)
            if getattr(args, f.name, None) is not None
        }
    )
    train_tiny_vl(
        meta.captions_file,
        folder,
        meta.vocab_file,
        args.out,
        opts,
        dataset_json=meta.json_file,
        resume=not args.no_resume,
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", default="lt_shapes_train", help="LT-Shapes training split name")
    p.add_argument("--out", default="output/pseudo_tiny_vl", help="output folder")
    p.add_argument("--no-resume", action="store_true", help="ignore OUT/last_state.pth")
    for f in dataclasses.fields(TinyVLOptions):
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=type(f.default),
            default=None,
            help=f"default {f.default}",
        )
    run_cli(main, p.parse_args())
