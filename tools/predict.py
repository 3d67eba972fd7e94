#!/usr/bin/env python
# Copyright (c) det_ext authors.
"""Runs an open-vocabulary detector on one image with a custom vocabulary.

Example::

    python tools/predict.py --config-file configs/LT-Shapes/ov_pseudo_then_base_R18_FPN_tiny.yaml \\
        --vocabulary "red triangle,blue ring" --input img.png --output out.png \\
        MODEL.WEIGHTS output/ov/model_final.pth OPEN_VOCAB.TEXT_ENCODER.WEIGHTS tiny_vl.pth

The vocabulary replaces the classifier, the number of classes and the class names in one call
(``det_ext.modeling.open_vocab.set_vocabulary``); its embeddings come from ``--embeddings`` or
from the config's text encoder (``OPEN_VOCAB.TEXT_ENCODER.*``). Without ``--vocabulary`` the
training vocabulary is used.
"""
import argparse
import logging
import sys

from detectron2.data.detection_utils import read_image

from det_ext.engine import build_config, run_cli
from det_ext.engine.visualize import predict_image
from det_ext.modeling.open_vocab import (find_open_vocab_heads, get_vocabulary, parse_vocabulary,
                                         set_vocabulary)
from det_ext.modeling.open_vocab.predict import (apply_vocabulary, draw_instances, filter_instances,
                                                 instances_to_records, load_open_vocab_model)
from det_ext.utils.errors import DetExtInputError
from det_ext.utils.io import atomic_write_json


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--input", required=True, help="image file")
    p.add_argument("--output", required=True, help="PNG with the detections drawn")
    p.add_argument("--vocabulary", default="", help='comma-separated class names')
    p.add_argument("--vocabulary-file", default="", help="one class name per line")
    p.add_argument("--embeddings", default="",
                   help="precomputed embedding file for the vocabulary (else the text encoder)")
    p.add_argument("--score-thresh", type=float, default=0.5)
    p.add_argument("--max-dets", type=int, default=50)
    p.add_argument("--json", default="", help="also write the detections as JSON")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    # Inference needs no dataset: the vocabulary comes from the command line or the weights file.
    cfg = build_config(args.config_file, list(args.opts) + ["DATASETS.TRAIN", "()",
                                                            "DATASETS.TEST", "()"])
    names = None
    if args.vocabulary and args.vocabulary_file:
        raise DetExtInputError("give --vocabulary or --vocabulary-file, not both")
    if args.vocabulary:
        names = parse_vocabulary(args.vocabulary)
    elif args.vocabulary_file:
        try:
            with open(args.vocabulary_file, encoding="utf-8") as f:
                names = parse_vocabulary(",".join(line.strip() for line in f))
        except OSError as e:
            raise DetExtInputError(f"{args.vocabulary_file}: {e}") from None
    try:
        image = read_image(args.input, format="BGR")
    except (OSError, ValueError) as e:
        raise DetExtInputError(f"{args.input}: cannot read image ({e})") from None
    model = load_open_vocab_model(cfg)
    if names is not None:
        meta = apply_vocabulary(cfg, model, names, args.embeddings)
    else:
        current = find_open_vocab_heads(model).box_predictor.cls_score.class_embeddings
        meta = set_vocabulary(model, get_vocabulary(model), embeddings=current)
    inst = filter_instances(predict_image(cfg, model, image), args.score_thresh, args.max_dets)
    draw_instances(image, inst, meta, args.output, scale=max(1.0, 512.0 / max(image.shape[:2])))
    records = instances_to_records(inst, meta.thing_classes)
    if args.json:
        atomic_write_json(args.json, {"vocabulary": list(meta.thing_classes),
                                      "detections": records}, indent=1)
    logging.getLogger("det_ext").info("%d detections (score >= %.2f) -> %s", len(records),
                                      args.score_thresh, args.output)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    run_cli(main, parse_args())
