#!/usr/bin/env python
# Copyright (c) det_ext authors.
"""Converts a PCL / MoPro / MoCo / ICCL / torchvision ResNet checkpoint into a Detectron2 pickle.

    python tools/convert_pretrained.py PCL_v2_epoch200.pth.tar pcl_v2.pkl --format pcl
    python tools/train_net.py --config-file configs/LT-Shapes/pretrained_R18_FPN_tiny.yaml \
        MODEL.WEIGHTS pcl_v2.pkl

Prints a coverage report; a partial or mismatched backbone is an error unless --allow-partial.
"""
import argparse
import logging

from det_ext.engine import run_cli
from det_ext.pretrain.convert import FORMAT_PREFIXES, convert_checkpoint


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("input", help="checkpoint (.pth / .pth.tar / .tar)")
    parser.add_argument("output", help="Detectron2 pickle to write (.pkl)")
    parser.add_argument("--format", default="auto", choices=sorted(FORMAT_PREFIXES),
                        help="checkpoint layout (auto: detect the key prefix)")
    parser.add_argument("--prefix", default=None,
                        help="explicit key prefix of the backbone (e.g. 'module.encoder_q.')")
    parser.add_argument("--allow-partial", action="store_true",
                        help="write the pickle even if backbone entries are missing or mismatched")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    report = convert_checkpoint(args.input, args.output, args.format, args.allow_partial,
                                prefix=args.prefix)
    print(report.summary())
    print(f"wrote {args.output}")


if __name__ == "__main__":
    run_cli(main)
