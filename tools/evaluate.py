#!/usr/bin/env python
# Copyright (c) det_ext authors.
"""Evaluate detection results against LVIS-format (or COCO-format) ground truth.

    python tools/evaluate.py --gt GT.json --dt DT.json --iou-type bbox|segm [--max-dets 300]
        [--max-dets-per-cat N] [--bins lvis|coco_lt|E0 E1 ...] [--count-key instance_count]
        [--coco] [--out metrics.json] [--plot ap_vs_freq.png] [--per-category]

LVIS mode (default) reproduces the LVIS API's federated evaluation exactly (without needing the
``lvis`` package) and adds AP per training-count bin and per category; ``--coco`` reproduces
pycocotools' ``COCOeval``. ``--out`` writes the metrics as fractions (``AP``... ``APf`` have the
meaning of the LVIS API's ``get_results()``; -1 where undefined) with the bin and per-category
results. Bad input is reported as one ``error:`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import List, Optional


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gt", required=True, help="ground-truth JSON (LVIS or COCO format)")
    ap.add_argument("--dt", required=True, help="results JSON (list of result objects)")
    ap.add_argument("--iou-type", choices=["bbox", "segm"], default="bbox")
    ap.add_argument("--max-dets", type=int, default=None,
                    help="LVIS: results kept per image (default 300; -1: no limit). "
                         "COCO: the largest per-(image, category) limit (default 100)")
    ap.add_argument("--max-dets-per-cat", type=int, default=None,
                    help="LVIS: results kept per category over the dataset (Fixed AP: 10000, "
                         "with --max-dets -1)")
    ap.add_argument("--bins", nargs="+", default=None,
                    help="training-count bins: a preset (lvis, coco_lt) or edges, e.g. "
                         "1 20 400 8000 for [1,20) [20,400) [400,8000) [8000,inf) "
                         "(default: lvis = 0 10 100 1000)")
    ap.add_argument("--count-key", default="instance_count",
                    help="category field with the training count (instance_count, image_count)")
    ap.add_argument("--coco", action="store_true", help="COCO evaluation (pycocotools COCOeval)")
    ap.add_argument("--out", help="write the metrics JSON here")
    ap.add_argument("--plot", help="draw per-category AP vs. training frequency to this image")
    ap.add_argument("--per-category", action="store_true", help="print the per-category table")
    ap.add_argument("--quiet", action="store_true", help="print only the summary table")
    return ap.parse_args(argv)


def _bins(spec: Optional[List[str]]):
    """``--bins`` values: one preset name, or numeric edges."""
    if spec is None:
        return None
    try:
        return [float(s) for s in spec]
    except ValueError:
        if len(spec) == 1:
            return spec[0]
        from det_ext.evaluation import EvaluationInputError

        raise EvaluationInputError(f"--bins: expected a preset or numbers, got {spec}") from None


def run(args: argparse.Namespace) -> dict:
    from det_ext.evaluation import evaluate_coco, evaluate_lvis
    from det_ext.evaluation.results import (bins_table, per_category_table, summary_table,
                                            write_json)

    t0 = time.perf_counter()
    if args.coco:
        limits = (1, 10, 100 if args.max_dets is None else args.max_dets)
        res = evaluate_coco(args.gt, args.dt, args.iou_type, max_dets=limits)
    else:
        res = evaluate_lvis(args.gt, args.dt, args.iou_type,
                            max_dets=300 if args.max_dets is None else args.max_dets,
                            max_dets_per_cat=args.max_dets_per_cat, bins=_bins(args.bins),
                            count_key=args.count_key)
    seconds = time.perf_counter() - t0
    mode = "COCO" if args.coco else "LVIS-style"
    print(f"{mode} {args.iou_type} evaluation of {args.dt} ({seconds:.2f} s), in percent:")
    print(summary_table(res))
    if "bins" in res and not args.quiet:
        print(f"\nAP by training {args.count_key} bin:")
        print(bins_table(res["bins"], args.count_key))
    if args.per_category and not args.quiet:
        print("\nPer-category AP:")
        print(per_category_table([{**c, "frequency": c.get("frequency")}
                                  for c in res["per_category"]]))
    if args.out:
        write_json(args.out, res)
        print(f"\nmetrics written to {args.out}")
    if args.plot:
        from det_ext.evaluation.plotting import plot_ap_vs_frequency

        if args.coco:
            print("--plot needs LVIS-style categories with training counts; skipped with --coco")
        else:
            plot_ap_vs_frequency(res["per_category"], args.plot, args.count_key, res["bins"],
                                 title=f"{args.iou_type} AP vs. training frequency")
            print(f"plot written to {args.plot}")
    return res


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from det_ext.utils.errors import DetExtInputError

    try:
        run(args)
    except DetExtInputError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
