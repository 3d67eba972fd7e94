#!/usr/bin/env python
# Copyright (c) det_ext authors.
"""Benchmark: SimCal on LT-Shapes (baseline -> calibration -> original / calibrated / dual).

Trains (or reuses) the LT-Shapes baseline ``configs/LT-Shapes/mask_rcnn_R18_FPN_tiny.yaml``,
calibrates it with ``configs/LT-Shapes/simcal_R18_FPN_tiny.yaml`` and evaluates the three
inference modes on the validation split (bbox and segm: AP, AP50, AP75, APr, APc, APf and the four
instance-count bins AP1..AP4, in percent). Also measures the time per calibration iteration and the
inference time per image of ``dual`` relative to the plain baseline detector (same images,
interleaved, batch 1).

    flock /tmp/det_ext_heavy.lock python benchmarks/simcal_lt_shapes.py --out results.json \
        [--seed N]

Writes ``--out`` (JSON), ``<out>.md`` (table), ``<out>.png`` (bar chart) and
``<out>_details.json`` (world, T, low-shot classes, iterations, per-mode timings). Every stage is
skipped when its output already exists (the baseline is reused if it was trained on the same
world), and calibration resumes from its last checkpoint, so a killed run continues where it was.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from typing import Any, Dict, List

import torch

from det_ext.engine import DetExtTrainer, build_config, run_cli
from det_ext.utils.io import atomic_write_json, atomic_open

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_CFG = os.path.join(REPO, "configs", "LT-Shapes", "mask_rcnn_R18_FPN_tiny.yaml")
SIMCAL_CFG = os.path.join(REPO, "configs", "LT-Shapes", "simcal_R18_FPN_tiny.yaml")
MODES = ("original", "calibrated", "dual")
KEYS = ("AP", "AP50", "AP75", "APr", "APc", "APf", "AP1", "AP2", "AP3", "AP4")

logger = logging.getLogger("det_ext.bench.simcal")


def _names(seed: int) -> Dict[str, str]:
    if seed == 0:
        return {"train": "lt_shapes_train", "val": "lt_shapes_val", "tag": ""}
    return {"train": f"lt_shapes_seed{seed}_train", "val": f"lt_shapes_seed{seed}_val",
            "tag": f"seed{seed}_"}


def _same_world(output_dir: str, train_name: str) -> bool:
    """True if ``output_dir`` holds a finished baseline trained on ``train_name``."""
    ckpt = os.path.join(output_dir, "model_final.pth")
    dumped = os.path.join(output_dir, "config.yaml")
    if not (os.path.isfile(ckpt) and os.path.isfile(dumped)):
        return False
    from detectron2.config import CfgNode

    with open(dumped) as f:
        cfg = CfgNode.load_cfg(f)
    return list(cfg.DATASETS.TRAIN) == [train_name]


def train_baseline(names: Dict[str, str], opts: List[str]) -> str:
    out = os.path.join(REPO, "output", f"lt_shapes_{names['tag']}mask_rcnn_R18_FPN_tiny")
    if _same_world(out, names["train"]):
        logger.info("reusing the baseline %s/model_final.pth", out)
        return os.path.join(out, "model_final.pth")
    cfg = build_config(BASE_CFG, ["DATASETS.TRAIN", f"('{names['train']}',)", "DATASETS.TEST", "()",
                                  "OUTPUT_DIR", out, *opts])
    os.makedirs(out, exist_ok=True)
    trainer = DetExtTrainer(cfg)
    trainer.resume_or_load(resume=True)
    trainer.train()
    with atomic_open(os.path.join(out, "config.yaml")) as f:
        f.write(cfg.dump())
    return os.path.join(out, "model_final.pth")


def calibrate(names: Dict[str, str], weights: str, work: str, opts: List[str]) -> Dict[str, Any]:
    from det_ext.engine.simcal_trainer import SimCalTrainer

    out = os.path.join(work, "calibration")
    cfg = build_config(SIMCAL_CFG, ["DATASETS.TRAIN", f"('{names['train']}',)",
                                    "DATASETS.TEST", "()",
                                    "MODEL.WEIGHTS", weights, "OUTPUT_DIR", out, *opts])
    final = os.path.join(out, "model_final.pth")
    if not os.path.isfile(final):
        os.makedirs(out, exist_ok=True)
        trainer = SimCalTrainer(cfg)
        trainer.resume_or_load(resume=True)
        trainer.train()
    with open(os.path.join(out, "training_metrics.json")) as f:
        times = [json.loads(line).get("time") for line in f]
    times = [t for t in times if t is not None]
    return {"cfg": cfg, "weights": final,
            "seconds_per_iter": statistics.mean(times) if times else float("nan")}


def evaluate_modes(cal_cfg, names: Dict[str, str], weights: str, work: str) -> Dict[str, Any]:
    from detectron2.checkpoint import DetectionCheckpointer

    from det_ext.engine.simcal_trainer import SimCalTrainer

    results: Dict[str, Any] = {}
    for mode in MODES:
        out = os.path.join(work, f"eval_{mode}")
        path = os.path.join(out, "metrics.json")
        if not os.path.isfile(path):
            cfg = cal_cfg.clone()
            cfg.defrost()
            cfg.SIMCAL.INFERENCE_MODE = mode
            cfg.DATASETS.TEST = (names["val"],)
            cfg.OUTPUT_DIR = out
            cfg.freeze()
            os.makedirs(out, exist_ok=True)
            model = SimCalTrainer.build_model(cfg)
            DetectionCheckpointer(model).load(weights)
            SimCalTrainer.test(cfg, model)
        with open(path) as f:
            results[mode] = json.load(f)
    return results


def time_inference(cal_cfg, names, base_weights, cal_weights, num_images: int,
                   base_opts: List[str] = ()) -> Dict[str, float]:
    """Seconds per image of the plain baseline and of ``dual``, interleaved on the same images."""
    import cv2
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetCatalog

    from det_ext.engine.simcal_trainer import SimCalTrainer

    base_cfg = build_config(BASE_CFG, ["DATASETS.TEST", f"('{names['val']}',)", *base_opts])
    base = DetExtTrainer.build_model(base_cfg)
    DetectionCheckpointer(base).load(base_weights)
    dual = SimCalTrainer.build_model(cal_cfg)
    DetectionCheckpointer(dual).load(cal_weights)
    dual.roi_heads.inference_mode = "dual"
    base.eval()
    dual.eval()
    dicts = DatasetCatalog.get(names["val"])[: num_images + 5]
    inputs = []
    for d in dicts:
        img = cv2.imread(d["file_name"])
        inputs.append({"image": torch.as_tensor(img.transpose(2, 0, 1).copy()),
                       "height": d["height"], "width": d["width"]})
    spent = {"baseline": 0.0, "dual": 0.0}
    with torch.no_grad():
        for i, x in enumerate(inputs):
            order = [("baseline", base), ("dual", dual)][:: 1 if i % 2 == 0 else -1]
            for name, model in order:
                t0 = time.perf_counter()
                model([x])
                if i >= 5:  # warm-up images are not counted
                    spent[name] += time.perf_counter() - t0
    n = max(len(inputs) - 5, 1)
    return {"baseline_seconds_per_image": spent["baseline"] / n,
            "dual_seconds_per_image": spent["dual"] / n, "images": n}


def _table(res: Dict[str, Any]) -> str:
    lines = []
    for task in ("bbox", "segm"):
        lines += [f"### {task}", "", "| mode | " + " | ".join(KEYS) + " |",
                  "|---|" + "---|" * len(KEYS)]
        for mode in MODES:
            cells = " | ".join(f"{res[task][mode][k]:.1f}" for k in KEYS)
            lines.append(f"| {mode} | {cells} |")
        lines.append("")
    lines.append(f"seconds per calibration iteration: {res['seconds_per_calibration_iter']:.3f}; "
                 "dual / baseline inference time per image: "
                 f"{res['dual_inference_time_ratio']:.3f}")
    return "\n".join(lines) + "\n"


def _chart(res: Dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = ("AP", "APr", "APc", "APf", "AP1", "AP2", "AP3", "AP4")
    fig, axes = plt.subplots(1, 2, figsize=(13, 4), sharey=True)
    x = np.arange(len(keys))
    for ax, task in zip(axes, ("bbox", "segm")):
        for j, mode in enumerate(MODES):
            ax.bar(x + (j - 1) * 0.27, [res[task][mode][k] for k in keys], 0.27, label=mode)
        ax.set_xticks(x, keys)
        ax.set_title(f"LT-Shapes val, {task}")
        ax.set_ylabel("AP (%)")
    axes[0].legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def main(args: argparse.Namespace) -> None:
    from detectron2.utils.logger import setup_logger

    setup_logger(name="det_ext")
    setup_logger(name="detectron2")
    torch.set_num_threads(args.threads)
    names = _names(args.seed)
    work = args.work_dir or os.path.join(REPO, "output", f"simcal_bench_{names['tag']}lt_shapes")
    t0 = time.time()
    base_weights = train_baseline(names, ["SEED", str(args.train_seed)])
    t_base = time.time() - t0
    cal_opts = ["SEED", str(args.train_seed)]
    if args.calib_iters:  # keep the config's relative lr-decay points
        ref = build_config(SIMCAL_CFG, ["DATASETS.TRAIN", f"('{names['train']}',)",
                                        "DATASETS.TEST", "()"])
        steps = tuple(round(s * args.calib_iters / ref.SIMCAL.SOLVER.MAX_ITER)
                      for s in ref.SIMCAL.SOLVER.STEPS)
        cal_opts += ["SIMCAL.SOLVER.MAX_ITER", str(args.calib_iters),
                     "SIMCAL.SOLVER.STEPS", str(steps)]
    cal_opts += list(args.opts)
    cal = calibrate(names, base_weights, work, cal_opts)
    t_cal = time.time() - t0 - t_base
    metrics = evaluate_modes(cal["cfg"], names, cal["weights"], work)
    timing = time_inference(cal["cfg"], names, base_weights, cal["weights"], args.timing_images)
    res: Dict[str, Any] = {task: {m: {k: float(metrics[m][task][k]) for k in KEYS} for m in MODES}
                           for task in ("bbox", "segm")}
    res["seconds_per_calibration_iter"] = cal["seconds_per_iter"]
    res["dual_inference_time_ratio"] = (timing["dual_seconds_per_image"]
                                        / timing["baseline_seconds_per_image"])
    atomic_write_json(args.out, res, indent=2)
    stem = os.path.splitext(args.out)[0]
    with atomic_open(stem + ".md") as f:
        f.write(_table(res))
    _chart(res, stem + ".png")
    from det_ext.modeling.simcal import low_shot_classes, resolve_dual_threshold
    from det_ext.data import get_class_statistics

    stats = get_class_statistics(names["train"])
    c = cal["cfg"]
    details = {
        "world_seed": args.seed, "train": names["train"], "val": names["val"],
        "baseline_weights": base_weights, "calibrated_weights": cal["weights"],
        "dual_threshold": resolve_dual_threshold(c.SIMCAL.DUAL_THRESHOLD, names["train"],
                                                 stats.instance_counts, stats.frequency),
        "low_shot_classes": [i for i, v in enumerate(low_shot_classes(
            names["train"], c.SIMCAL.DUAL_THRESHOLD, c.SIMCAL.DUAL_STATISTIC).tolist()) if v],
        "calibration_iters": c.SIMCAL.SOLVER.MAX_ITER,
        "calibration_steps": list(c.SIMCAL.SOLVER.STEPS),
        "ims_per_batch": c.SIMCAL.IMS_PER_BATCH, "head": c.SIMCAL.HEAD, "timing": timing,
        "wall_seconds": {"baseline": t_base, "calibration": t_cal, "total": time.time() - t0},
        "torch_threads": args.threads,
    }
    atomic_write_json(stem + "_details.json", details, indent=2)
    print(_table(res))  # noqa: T201  (benchmark output)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="results JSON path")
    parser.add_argument("--seed", type=int, default=0, help="LT-Shapes world seed")
    parser.add_argument("--train-seed", type=int, default=0, help="SEED of training/calibration")
    parser.add_argument("--work-dir", default="",
                        help="default: output/simcal_bench_[seedN_]lt_shapes")
    parser.add_argument("--calib-iters", type=int, default=0,
                        help="override SIMCAL.SOLVER.MAX_ITER (0: the config's)")
    parser.add_argument("--timing-images", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="extra config overrides (KEY VALUE)")
    run_cli(main, parser.parse_args())
