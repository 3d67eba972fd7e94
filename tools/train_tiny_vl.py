#!/usr/bin/env python
# Copyright (c) det_ext authors.
"""Trains the tiny ALBEF-style model on LT-Shapes captions (CPU, 14 minutes on 2 cores).

    python tools/train_tiny_vl.py --out output/pseudo_tiny_vl           # default world
    python tools/train_tiny_vl.py --dataset lt_shapes_seed1_train --out output/tiny_vl_seed1
    # a larger caption corpus: the train splits of several worlds (never a val split)
    python tools/train_tiny_vl.py --dataset lt_shapes_train lt_shapes_seed101_train --out OUT

The checkpoint (``OUT/tiny_albef.pth``, ALBEF pre-training format) is what
``configs/LT-Shapes/pseudo_tiny_albef.yaml`` points to. Rerunning the command resumes.
"""

import argparse
import dataclasses

from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger

from det_ext.data.datasets import ensure_lt_shapes_generated, register_lt_shapes
from det_ext.data.datasets.lt_shapes import maybe_register_lt_shapes_name
from det_ext.engine import run_cli
from det_ext.pseudo.tiny_vl import TinyVLOptions, train_tiny_vl
from det_ext.utils.errors import ConfigInputError


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def main(args: argparse.Namespace) -> None:
    setup_logger(name="det_ext")
    register_lt_shapes()
    folders, metas = [], []
    for name in args.dataset:
        maybe_register_lt_shapes_name(name)
        if name not in MetadataCatalog.list():
            raise ConfigInputError(f"--dataset: unknown LT-Shapes dataset '{name}'")
        folders.append(ensure_lt_shapes_generated(name))
        metas.append(MetadataCatalog.get(name))
    opts = TinyVLOptions(
        **{
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(TinyVLOptions)
            if getattr(args, f.name, None) is not None
        }
    )
    train_tiny_vl(
        [m.captions_file for m in metas],
        folders,
        metas[0].vocab_file,
        args.out,
        opts,
        dataset_json=metas[0].json_file,
        resume=not args.no_resume,
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--dataset",
        nargs="+",
        default=["lt_shapes_train"],
        help="LT-Shapes training split name(s); several form one caption corpus",
    )
    p.add_argument("--out", default="output/pseudo_tiny_vl", help="output folder")
    p.add_argument("--no-resume", action="store_true", help="ignore OUT/last_state.pth")
    for f in dataclasses.fields(TinyVLOptions):
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_parse_bool if isinstance(f.default, bool) else type(f.default),
            default=None,
            help=f"default {f.default}",
        )
    run_cli(main, p.parse_args())
