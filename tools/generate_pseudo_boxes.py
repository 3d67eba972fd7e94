#!/usr/bin/env python
# Copyright (c) det_ext authors.
"""Generates pseudo boxes from captions with vision-language Grad-CAM (PB-OVD).

    python tools/generate_pseudo_boxes.py --config configs/LT-Shapes/pseudo_tiny_albef.yaml \\
        --captions datasets/lt_shapes/<digest>/captions_val.json \\
        --vocab datasets/lt_shapes/<digest>/vocab.json --out output/pseudo/val_pseudo.json

Resumable: results go batch by batch to ``OUT.shards/``; rerun the same command after a kill.
Sharded: ``--shard i/n`` on n processes or machines (shared folder); the last shard to finish writes
OUT, or run ``--merge`` once all are done. Trailing ``KEY VALUE`` pairs override the config.
"""

import argparse
import logging

from detectron2.config import get_cfg
from detectron2.utils.logger import setup_logger

from det_ext.config import add_det_ext_config
from det_ext.engine import run_cli
from det_ext.pseudo.inputs import read_captions
from det_ext.pseudo.matching import Vocabulary
from det_ext.pseudo.pipeline import (
    dataset_categories,
    generate_pseudo_boxes,
    generator_settings,
    try_merge,
)
from det_ext.utils.errors import ConfigInputError


def parse_shard(text: str):
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigInputError(f"--shard: expected i/n (e.g. 0/4), got '{text}'") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigInputError(f"--shard: need 0 <= i < n, got {text}")
    return i, n


def main(args: argparse.Namespace) -> None:
    setup_logger(name="det_ext")
    cfg = get_cfg()
    add_det_ext_config(cfg)
    try:
        cfg.merge_from_file(args.config)
        cfg.merge_from_list(args.opts)
    except (KeyError, ValueError, AssertionError, FileNotFoundError) as e:
        raise ConfigInputError(f"{args.config}: {e}") from None
    cfg.freeze()
    shard = parse_shard(args.shard)
    if args.merge:
        import os

        records = read_captions(args.captions)
        cats = dataset_categories(args.captions, args.dataset_json)
        vocab = Vocabulary.load(args.vocab, cats, cfg.PSEUDO.MATCHING.AUTO_PLURALS)
        root = args.image_root or os.path.dirname(os.path.abspath(args.captions))
        report = try_merge(args.out, shard[1], records, vocab, cats, root, generator_settings(cfg))
        if report is None:
            raise ConfigInputError(f"--merge: not every shard of {args.out} is finished")
    else:
        report = generate_pseudo_boxes(
            cfg,
            args.captions,
            args.vocab,
            args.out,
            args.image_root,
            args.dataset_json,
            shard,
            progress=not args.no_progress,
            text_embeddings=args.text_embeddings,
        )
    if report is not None:
        logging.getLogger("det_ext").info("Report: %s", report)


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", required=True, help="det_ext config with PSEUDO keys")
    p.add_argument(
        "--captions", required=True, help="[{image_id, file_name, captions}] or LVIS JSON"
    )
    p.add_argument("--vocab", required=True, help="{category: [surface forms]} JSON")
    p.add_argument("--out", required=True, help="output COCO-format JSON")
    p.add_argument(
        "--image-root", default=None, help="folder of file_name (default: captions folder)"
    )
    p.add_argument(
        "--dataset-json",
        default=None,
        help="LVIS/COCO JSON whose categories give ids, synonyms and plurals",
    )
    p.add_argument("--shard", default="0/1", help="i/n: process every n-th image from the i-th")
    p.add_argument("--merge", action="store_true", help="only merge finished shards into --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--text-embeddings",
        action="store_true",
        help="store the backend's text embedding of every category name",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    run_cli(main, p.parse_args())
