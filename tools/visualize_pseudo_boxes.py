#!/usr/bin/env python
# Copyright (c) det_ext authors.
"""Draws pseudo boxes over their activation heatmaps (one PNG per image and category).

    python tools/visualize_pseudo_boxes.py --config configs/LT-Shapes/pseudo_tiny_albef.yaml \\
        --pseudo output/pseudo/val_pseudo.json --captions .../captions_val.json \\
        --vocab .../vocab.json --gt .../val.json --out-dir output/pseudo/vis --num-images 12

Green: the pseudo box(es); red: ground-truth boxes of the same category (``--gt``); the heatmap is
the normalised, thresholded map used for selection, recomputed with the config's backend.
"""

import argparse
import os
from collections import defaultdict

import cv2
from detectron2.config import get_cfg
from detectron2.utils.logger import setup_logger

from det_ext.config import add_det_ext_config
from det_ext.data.datasets import read_dataset_json
from det_ext.engine import run_cli
from det_ext.pseudo.inputs import load_rgb, read_captions
from det_ext.pseudo.matching import Vocabulary
from det_ext.pseudo.pipeline import build_generator, dataset_categories
from det_ext.pseudo.proposals import NoProposals
from det_ext.pseudo.visualize import draw_pseudo_box
from det_ext.utils.errors import ConfigInputError


def main(args: argparse.Namespace) -> None:
    logger = setup_logger(name="det_ext")
    cfg = get_cfg()
    add_det_ext_config(cfg)
    try:
        cfg.merge_from_file(args.config)
        cfg.merge_from_list(args.opts)
    except (KeyError, ValueError, AssertionError, FileNotFoundError) as e:
        raise ConfigInputError(f"{args.config}: {e}") from None
    pseudo = read_dataset_json(args.pseudo)
    root = (
        args.image_root
        or pseudo.get("info", {}).get("image_root")
        or os.path.dirname(args.captions)
    )
    cats = dataset_categories(args.captions, args.gt)
    vocab = Vocabulary.load(args.vocab, cats or pseudo["categories"])
    names = {c["id"]: c["name"] for c in pseudo["categories"]}
    records = read_captions(args.captions)[: args.num_images]
    # proposals are not needed for the maps: do not load the proposal model
    generator = build_generator(cfg, vocab, root, proposals=NoProposals())
    boxes, gt = defaultdict(list), defaultdict(list)
    for a in pseudo["annotations"]:
        boxes[(a["image_id"], a["category_id"])].append(a["bbox"])
    if args.gt:
        for a in read_dataset_json(args.gt)["annotations"]:
            gt[(a["image_id"], a["category_id"])].append(a["bbox"])
    os.makedirs(args.out_dir, exist_ok=True)
    written = 0
    for s in range(0, len(records), cfg.PSEUDO.BATCH_SIZE):
        batch = records[s : s + cfg.PSEUDO.BATCH_SIZE]
        acts = generator.activations(batch)
        by_id = {r.image_id: r for r in batch}
        for (image_id, cat_id), act in acts.items():
            image = load_rgb(os.path.join(root, by_id[image_id].file_name))
            title = f"{image_id} {names.get(cat_id, cat_id)}"
            png = draw_pseudo_box(
                image, act, boxes.get((image_id, cat_id), []), gt.get((image_id, cat_id), []), title
            )
            path = os.path.join(args.out_dir, f"{image_id}_{cat_id}.png")
            cv2.imwrite(path, png[:, :, ::-1])
            written += 1
    logger.info("Wrote %d PNGs to %s", written, args.out_dir)


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", required=True)
    p.add_argument("--pseudo", required=True, help="pseudo-box JSON from generate_pseudo_boxes.py")
    p.add_argument("--captions", required=True)
    p.add_argument("--vocab", required=True)
    p.add_argument("--gt", default=None, help="ground-truth LVIS/COCO JSON (red boxes)")
    p.add_argument("--image-root", default=None)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--num-images", type=int, default=12)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    run_cli(main, p.parse_args())
