#!/usr/bin/env python
# Copyright (c) det_ext authors.
"""Builds a class text-embedding file for the open-vocabulary detector.

Examples::

    # LT-Shapes classes with the tiny vision-language model
    python tools/build_text_embeddings.py --dataset lt_shapes_ov_val --encoder tiny_vl \\
        --weights output/tiny_vl/model_final.pth --out output/ov/lt_shapes_all.pt
    # COCO OV names with a local open_clip checkpoint / a transformers CLIP folder
    python tools/build_text_embeddings.py --dataset coco_ov_val --encoder open_clip \\
        --model ViT-B-32 --weights /models/ViT-B-32.pt --out coco_ov_val_clip.pt
    python tools/build_text_embeddings.py --names "red triangle,blue ring" --encoder hf_clip \\
        --weights /models/clip-vit-base-patch32 --out custom.pt
"""
import argparse
import logging
import sys

from det_ext.engine import run_cli
from det_ext.modeling.open_vocab import parse_vocabulary
from det_ext.modeling.open_vocab.build import build_embeddings_file, resolve_class_names


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_argument_group("class names (one of)")
    src.add_argument("--dataset", default="", help="registered dataset whose classes to embed")
    src.add_argument("--names", default="", help='comma-separated names, e.g. "red ring,blue bar"')
    src.add_argument("--names-file", default="", help="text file, one class name per line")
    p.add_argument("--encoder", required=True, choices=["tiny_vl", "open_clip", "hf_clip"])
    p.add_argument("--weights", default="",
                   help="tiny VL / open_clip checkpoint file, or transformers CLIP folder")
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture name")
    p.add_argument("--pooling", default="mean", choices=["mean", "proj", "cls"],
                   help="tiny_vl text pooling (default: mean of the word-token states)")
    p.add_argument("--template", action="append", default=None,
                   help="prompt template with {} (repeatable; default: the encoder's set)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="output .pt file")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    names = resolve_class_names(parse_vocabulary(args.names) if args.names else None,
                                args.dataset, args.names_file)
    emb = build_embeddings_file(args.out, names, args.encoder, args.weights, args.model,
                                args.template, args.device, args.pooling)
    logging.getLogger("det_ext").info("%d classes, dimension %d -> %s", len(emb), emb.dim,
                                      args.out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    run_cli(main, parse_args())
