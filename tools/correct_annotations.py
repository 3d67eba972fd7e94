#!/usr/bin/env python
# Copyright (c) det_ext authors.
"""Clean a noisy dataset with a trained dual-head model: write the corrected JSON and a report.

    python tools/correct_annotations.py \
        --config-file configs/LT-Shapes/noisy_dual_head_R18_FPN_tiny.yaml \
        --weights output/lt_shapes_noisy_l40_b40_dual_head/model_final.pth \
        --dataset lt_shapes_train_noisy_l40_b40 --output cleaned.json [KEY VALUE ...]

``--dataset`` is a registered name, or use ``--json FILE --image-root DIR`` for any COCO/LVIS-format
file (annotations need ids). The report (changed labels/boxes; with ``clean_bbox`` in the input,
mean IoU and label accuracy before/after) is printed and written next to the output.
"""
import argparse
import json
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from det_ext.data.datasets import register_lvis_format_dataset
from det_ext.engine import build_config, run_cli
from det_ext.modeling.noisy.correct_dataset import correct_dataset
from det_ext.utils.errors import DetExtInputError
from det_ext.utils.io import atomic_write_json


def run(args: argparse.Namespace) -> dict:
    cfg = build_config(args.config_file, ["MODEL.WEIGHTS", args.weights, *args.opts])
    name = args.dataset
    if args.json:
        name = "correct_annotations_input"
        if name not in DatasetCatalog.list():
            register_lvis_format_dataset(name, args.json, args.image_root)
    elif not name:
        raise DetExtInputError("give --dataset NAME or --json FILE --image-root DIR")
    else:
        from det_ext.data.datasets import prepare_datasets

        prepare_datasets([name])
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    corrected, report = correct_dataset(cfg, model, name, batch_size=args.batch_size)
    atomic_write_json(args.output, corrected)
    report_file = args.report or os.path.splitext(args.output)[0] + "_report.json"
    atomic_write_json(report_file, report, indent=2)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="trained dual-head model (.pth)")
    parser.add_argument("--dataset", default="", help="registered dataset name")
    parser.add_argument("--json", default="", help="COCO/LVIS-format file (instead of --dataset)")
    parser.add_argument("--image-root", default="", help="image folder of --json")
    parser.add_argument("--output", required=True, help="corrected JSON to write")
    parser.add_argument("--report", default="", help="report JSON (default: OUTPUT_report.json)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args()
    report = run_cli(run, args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
