#!/usr/bin/env python
# Copyright (c) det_ext authors.
"""The main job (`make demo`): train and evaluate the tiny Mask R-CNN on LT-Shapes, on CPU.

    python tools/demo.py --output-dir output/demo [KEY VALUE ...]
"""
import argparse

from tabulate import tabulate

from det_ext.engine import run_cli
from det_ext.engine.demo import DEFAULT_DEMO_CONFIG, run_demo

KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="output/demo")
    parser.add_argument("--config-file", default=DEFAULT_DEMO_CONFIG)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args()
    out = run_cli(run_demo, args.output_dir, args.config_file, args.opts)
    rows = [[task] + [f"{out['results'][task].get(k, float('nan')):.1f}" for k in KEYS]
            for task in ("bbox", "segm") if task in out["results"]]
    print(tabulate(rows, headers=["LT-Shapes val"] + list(KEYS), tablefmt="github"))
    print(f"metrics:     {out['metrics']}")
    print(f"model:       {out['model']}")
    print(f"predictions: {out['predictions_png']}")
    print(f"output folder: {out['output_dir']}")


if __name__ == "__main__":
    main()
