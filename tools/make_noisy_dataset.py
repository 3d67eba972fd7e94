#!/usr/bin/env python
# Copyright (c) det_ext authors.
"""Write a copy of a COCO/LVIS-format dataset with synthetic label and box noise.

    python tools/make_noisy_dataset.py --input train.json --output train_noisy_l40_b40.json \
        --label-rate 0.4 --box-rate 0.4 --seed 0

Every noisy annotation keeps ``clean_id`` (and ``clean_bbox``, ``clean_category_id``) so that
corrections can be scored. Registered datasets get noisy copies on demand by name instead
(``lt_shapes_train_noisy_l40_b40``); see docs/noisy_boxes.md.
"""
import argparse
import json

from det_ext.data.datasets import read_dataset_json
from det_ext.data.noise import (DEGENERATE_MODES, LABEL_MODES, NoiseSpec, NoiseSpecError,
                               make_noisy_dataset)
from det_ext.engine import run_cli
from det_ext.utils.io import atomic_write_json


def run(args: argparse.Namespace) -> dict:
    transition = None
    if args.transition:
        try:
            with open(args.transition) as f:
                transition = tuple(tuple(row) for row in json.load(f))
        except (OSError, ValueError) as e:
            raise NoiseSpecError(f"{args.transition}: cannot read the transition matrix: {e}")
    spec = NoiseSpec(label_rate=args.label_rate, box_rate=args.box_rate, seed=args.seed,
                     label_mode=args.label_mode, transition=transition, y_scale=args.y_scale,
                     clip=not args.no_clip, degenerate=args.degenerate,
                     keep_segmentation=args.keep_segmentation)
    noisy = make_noisy_dataset(read_dataset_json(args.input), spec, args.input)
    atomic_write_json(args.output, noisy)
    return noisy["noise"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="clean COCO/LVIS-format JSON")
    parser.add_argument("--output", required=True, help="noisy JSON to write")
    parser.add_argument("--label-rate", type=float, default=0.4, help="fraction relabelled, [0, 1]")
    parser.add_argument("--box-rate", type=float, default=0.4, help="box noise Nb, [0, 1]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-mode", default="symmetric",
                        choices=list(LABEL_MODES))
    parser.add_argument("--transition", default="",
                        help="JSON file with a KxK flip matrix (label mode 'matrix')")
    parser.add_argument("--y-scale", default="h", choices=["h", "w"])
    parser.add_argument("--degenerate", default="reorder", choices=list(DEGENERATE_MODES))
    parser.add_argument("--no-clip", action="store_true", help="do not clip boxes to the image")
    parser.add_argument("--keep-segmentation", action="store_true")
    args = parser.parse_args()
    stats = run_cli(run, args)
    print(f"wrote {args.output}: {stats['num_annotations']} annotations, realised label noise "
          f"{stats['realised_label_rate']:.3f}, mean IoU with the clean boxes "
          f"{stats['mean_iou']:.3f}")


if __name__ == "__main__":
    main()
