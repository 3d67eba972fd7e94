#!/usr/bin/env python
# Copyright (c) det_ext authors.
"""Build the COCO-LT annotation files (LVIS format) from COCO 2017 instances.

    python tools/make_coco_lt.py \
        --coco-train datasets/coco/annotations/instances_train2017.json \
        --coco-val datasets/coco/annotations/instances_val2017.json \
        --out-dir datasets/coco_lt/annotations [--counts counts.json] [--seed 0]

Writes ``coco_lt_train.json`` (the sampled training split) and ``coco_lt_val.json`` (val2017 with
the COCO-LT training statistics). ``--counts`` is a JSON object {category name or id: instances};
by default the reference COCO-LT counts are used. See docs/simcal.md.
"""
import argparse
import json
import logging
import os

from det_ext.data.coco_lt import build_coco_lt_train, coco_to_lvis_val, resolve_target_counts
from det_ext.data.datasets import read_dataset_json
from det_ext.engine import run_cli
from det_ext.utils.errors import DatasetFormatError
from det_ext.utils.io import atomic_write_json

logger = logging.getLogger("det_ext.make_coco_lt")


def main(args: argparse.Namespace) -> None:
    coco = read_dataset_json(args.coco_train)
    counts = None
    if args.counts:
        try:
            with open(args.counts) as f:
                counts = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise DatasetFormatError(f"{args.counts}: cannot read the count table: {e}") from None
        if not isinstance(counts, dict):
            raise DatasetFormatError(f"{args.counts}: must be a JSON object {{category: count}}")
    targets = resolve_target_counts(coco["categories"], counts, args.counts or "counts")
    train = build_coco_lt_train(coco, targets, seed=args.seed, source=args.coco_train)
    os.makedirs(args.out_dir, exist_ok=True)
    out_train = os.path.join(args.out_dir, "coco_lt_train.json")
    atomic_write_json(out_train, train)
    logger.info("wrote %s: %d images, %d instances", out_train, len(train["images"]),
                len(train["annotations"]))
    if args.coco_val:
        val = coco_to_lvis_val(read_dataset_json(args.coco_val), train["categories"], args.coco_val)
        out_val = os.path.join(args.out_dir, "coco_lt_val.json")
        atomic_write_json(out_val, val)
        logger.info("wrote %s: %d images, %d instances", out_val, len(val["images"]),
                    len(val["annotations"]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coco-train", required=True, help="COCO instances_train2017.json")
    parser.add_argument("--coco-val", default="", help="COCO instances_val2017.json (optional)")
    parser.add_argument("--out-dir", default="datasets/coco_lt/annotations")
    parser.add_argument("--counts", default="", help="JSON {category name or id: instances}")
    parser.add_argument("--seed", type=int, default=0)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_cli(main, parser.parse_args())
