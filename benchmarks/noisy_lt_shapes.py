#!/usr/bin/env python
# Copyright (c) det_ext authors.
"""Benchmark: noise-resistant dual-head training on LT-Shapes with synthetic label/box noise.

For each noise setting (label %, box %) in l40_b40, l20_b20, l0_b40, l40_b0 it trains, on the same
noisy training set: vanilla Faster R-CNN ("vanilla"), the dual-head model with step 1 only
("box_correction_only") and the full method ("full"); "clean" (vanilla on the clean training set)
is trained once and shared by all settings. Every model is evaluated on the clean LT-Shapes val
split (bbox AP/AP50, percent). The full model then corrects the whole noisy training set
(``correct_dataset``) and the mean IoU with the clean boxes and the label accuracy are reported
before and after correction. The iteration-time ratio (full method vs. vanilla single head) is
measured on identical batches, interleaved.

Run it from the repository root (the world is generated under ``$DETECTRON2_DATASETS``)::

    python benchmarks/noisy_lt_shapes.py --out results.json [--seed 0] [--settings l40_b40 ...]

Runs are cached in ``--work-dir`` (rerunning skips finished ones, and an interrupted training
resumes from its last checkpoint). Writes ``results.json`` (the shape given in docs/noisy_boxes.md),
``<out>_details.json`` (training-time correction statistics, timings), a table on stdout and
``<out>_boxes.png`` (clean / noisy / corrected boxes of a few training images).

``--probe-weights MODEL.pth`` runs a quick inference-only correction probe instead (see
docs/noisy_boxes.md).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from typing import Any, Dict, List

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage
from detectron2.utils.logger import setup_logger

from det_ext.data import LTShapesSpec, register_lt_shapes
from det_ext.data.noisy_datasets import register_noisy_dataset
from det_ext.engine import build_config, build_trainer_class
from det_ext.modeling.noisy.correct_dataset import correct_dataset
from det_ext.utils.io import atomic_write_json

SETTINGS = {"l40_b40": (0.4, 0.4), "l20_b20": (0.2, 0.2), "l0_b40": (0.0, 0.4),
            "l40_b0": (0.4, 0.0)}
CFG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "LT-Shapes")
CONFIGS = {"vanilla": "noisy_vanilla_R18_FPN_tiny.yaml",
           "box_correction_only": "noisy_box_correction_only_R18_FPN_tiny.yaml",
           "full": "noisy_dual_head_R18_FPN_tiny.yaml", "clean": "noisy_vanilla_R18_FPN_tiny.yaml"}
logger = logging.getLogger("det_ext.benchmarks.noisy")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results.json")
    p.add_argument("--work-dir", default="output/bench_noisy_lt_shapes")
    p.add_argument("--seed", type=int, default=0, help="seed of the world and of the noise")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    # The benchmark world: a smaller LT-Shapes (CPU budget); see docs/noisy_boxes.md.
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--train-images", type=int, default=600)
    p.add_argument("--val-images", type=int, default=150)
    p.add_argument("--categories", type=int, default=10)
    p.add_argument("--max-iter", type=int, default=400)
    p.add_argument("--ims-per-batch", type=int, default=8)
    p.add_argument("--correction-warmup", type=int, default=160,
                   help="NOISY.WARMUP_ITERS of the dual-head variants")
    p.add_argument("--timing-iters", type=int, default=12)
    p.add_argument("--num-threads", type=int, default=0,
                   help="torch intra-op threads (0: torch's default); 1 avoids the large slowdowns "
                   "of multi-threaded ops on an oversubscribed CPU")
    p.add_argument("--probe-weights", default="",
                   help="correction probe instead of the benchmark: a single-head LT-Shapes model "
                   "(e.g. the baseline's model_final.pth) copied into both heads corrects a noisy "
                   "copy of --probe-dataset (inference only)")
    p.add_argument("--probe-dataset", default="lt_shapes_val")
    p.add_argument("--probe-classes", type=int, default=30)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for the dual-head "
                   "variants (NOISY.* KEY VALUE ...)")
    return p.parse_args(argv)


def world(args) -> Dict[str, str]:
    spec = LTShapesSpec(seed=args.seed, image_size=args.image_size,
                        num_train_images=args.train_images, num_val_images=args.val_images,
                        num_categories=args.categories, num_twins=max(2, args.categories // 5),
                        instances_per_image=4.0, min_val_instances=10)
    return register_lt_shapes(spec, prefix=f"noisybench_{spec.digest()}")


def common_opts(args, train: str, val: str, out_dir: str) -> List[str]:
    it = args.max_iter
    return ["DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{val}',)",
            "MODEL.ROI_HEADS.NUM_CLASSES", str(args.categories),
            "INPUT.MIN_SIZE_TRAIN", f"({args.image_size},)", "INPUT.MAX_SIZE_TRAIN",
            str(args.image_size), "INPUT.MIN_SIZE_TEST", str(args.image_size),
            "INPUT.MAX_SIZE_TEST", str(args.image_size), "SOLVER.MAX_ITER", str(it),
            "SOLVER.STEPS", f"({int(it * 0.75)}, {int(it * 0.92)})",
            "SOLVER.WARMUP_ITERS", str(min(100, it // 5)), "SOLVER.IMS_PER_BATCH",
            str(args.ims_per_batch), "SOLVER.CHECKPOINT_PERIOD", str(max(it // 4, 1)),
            "DATALOADER.NUM_WORKERS", "0", "SEED", str(args.seed), "OUTPUT_DIR", out_dir,
            "NOISY.WARMUP_ITERS", str(args.correction_warmup)]


def run_variant(args, variant: str, train: str, val: str, out_dir: str) -> Dict[str, Any]:
    """Trains (or reuses) one variant; returns its bbox metrics, config and model."""
    opts = common_opts(args, train, val, out_dir)
    if variant in ("full", "box_correction_only"):
        opts += list(args.opts)
    cfg = build_config(os.path.join(CFG_DIR, CONFIGS[variant]), opts)
    metrics_file = os.path.join(out_dir, "metrics.json")
    trainer_cls = build_trainer_class(cfg)
    if os.path.isfile(metrics_file):
        with open(metrics_file) as f:
            metrics = json.load(f)
        model = None
    else:
        os.makedirs(out_dir, exist_ok=True)
        start = time.perf_counter()
        trainer = trainer_cls(cfg)
        trainer.resume_or_load(resume=True)
        trainer.train()  # evaluates on DATASETS.TEST after the last iteration
        results = getattr(trainer, "_last_eval_results", None) or trainer_cls.test(cfg,
                                                                                   trainer.model)
        metrics = {k: dict(v) for k, v in results.items()}
        logger.info("%s trained and evaluated in %.0f s", out_dir, time.perf_counter() - start)
        model = trainer.model
    return {"metrics": metrics, "cfg": cfg, "model": model}


def load_model(cfg):
    model = build_model(cfg)
    DetectionCheckpointer(model).load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    return model


def training_correction_stats(out_dir: str) -> Dict[str, float]:
    """Means of the logged per-iteration correction statistics (after the warm-up)."""
    path = os.path.join(out_dir, "training_metrics.json")
    sums: Dict[str, List[float]] = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                for k, v in rec.items():
                    if k.startswith("noisy/"):
                        sums.setdefault(k[6:], []).append(v)
    return {k: float(np.mean(v)) for k, v in sums.items()}


def measure_iteration_ratio(cfgs: Dict[str, Any], iters: int) -> Dict[str, float]:
    """Median seconds per training iteration (forward, backward, SGD step) of each config on the
    same batches, interleaved, with the correction active; and ratios to "vanilla"."""
    torch.manual_seed(0)
    models = {k: build_model(c) for k, c in cfgs.items()}
    optims = {k: build_optimizer(cfgs[k], m) for k, m in models.items()}
    trainer_cls = build_trainer_class(cfgs["full"])
    loader = iter(trainer_cls.build_train_loader(cfgs["full"]))
    times: Dict[str, List[float]] = {k: [] for k in models}
    with EventStorage(start_iter=10**6):
        for i in range(iters + 2):
            batch = next(loader)
            for k, model in models.items():
                model.train()
                start = time.perf_counter()
                losses = model(batch)
                optims[k].zero_grad()
                sum(losses.values()).backward()
                optims[k].step()
                if i >= 2:  # the first iterations allocate memory
                    times[k].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {**{f"{k}_s_per_iter": v for k, v in med.items()},
            **{f"{k}_ratio": v / med["vanilla"] for k, v in med.items()}}


def draw_boxes_png(corrected: Dict[str, Any], image_root: str, path: str, n: int = 6) -> None:
    """The first ``n`` training images with annotations: clean (green), noisy (red, dashed) and
    corrected (blue) boxes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    by_image: Dict[int, List[Dict[str, Any]]] = {}
    for a in corrected["annotations"]:
        if "noisy_bbox" in a:
            by_image.setdefault(a["image_id"], []).append(a)
    images = [img for img in corrected["images"] if img["id"] in by_image][:n]
    fig, axes = plt.subplots(1, len(images), figsize=(3 * len(images), 3.3))
    for ax, img in zip(np.atleast_1d(axes), images):
        ax.imshow(Image.open(os.path.join(image_root, img["file_name"])).convert("RGB"))
        for a in by_image[img["id"]]:
            for box, colour, style in ((a["clean_bbox"], "lime", "-"),
                                       (a["noisy_bbox"], "red", "--"), (a["bbox"], "blue", "-")):
                ax.add_patch(plt.Rectangle(box[:2], box[2], box[3], fill=False, color=colour,
                                           linestyle=style, linewidth=1.2))
        ax.set_axis_off()
    fig.suptitle("green: clean, red dashed: noisy (l40_b40), blue: corrected")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def probe(args: argparse.Namespace) -> Dict[str, Any]:
    """Corrects ``--probe-dataset`` with label/box noise 40/40 using a trained single-head model in
    both heads (identical heads: the discrepancy is 0, step 1 follows the objectness only)."""
    name = register_noisy_dataset(args.probe_dataset, 0.4, 0.4, seed=args.seed)
    cfg = build_config(os.path.join(CFG_DIR, CONFIGS["full"]),
                       ["MODEL.ROI_HEADS.NUM_CLASSES", str(args.probe_classes), "DATASETS.TRAIN",
                        f"('{name}',)", "DATASETS.TEST", "()", *args.opts])
    model = build_model(cfg)
    DetectionCheckpointer(model).load(args.probe_weights)
    heads = model.roi_heads
    heads.box_head2.load_state_dict(heads.box_head.state_dict())
    heads.box_predictor2.load_state_dict(heads.box_predictor.state_dict())
    _, report = correct_dataset(cfg, model, name, batch_size=16)
    print(json.dumps({"opts": args.opts, **report}))
    return report


def main(args: argparse.Namespace) -> Dict[str, Any]:
    setup_logger(name="det_ext")
    setup_logger()
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    if args.probe_weights:
        return probe(args)
    names = world(args)
    work = args.work_dir
    results: Dict[str, Any] = {}
    details: Dict[str, Any] = {"args": {k: v for k, v in vars(args).items()}}
    base = os.path.splitext(args.out)[0]
    timing_file = os.path.join(work, "timing.json")
    if not os.path.isfile(timing_file):
        train = register_noisy_dataset(names["train"], 0.4, 0.4, seed=args.seed)
        cfgs = {}
        for variant in ("vanilla", "box_correction_only", "full"):
            opts = common_opts(args, train, names["val"], os.path.join(work, "timing"))
            opts += ["NOISY.WARMUP_ITERS", "0"]
            cfgs[variant] = build_config(os.path.join(CFG_DIR, CONFIGS[variant]), opts)
        dual_only = common_opts(args, train, names["val"], os.path.join(work, "timing"))
        cfgs["dual_head_no_correction"] = build_config(
            os.path.join(CFG_DIR, CONFIGS["full"]),
            dual_only + ["NOISY.WARMUP_ITERS", "1000000000"])
        atomic_write_json(timing_file, measure_iteration_ratio(cfgs, args.timing_iters), indent=2)
    with open(timing_file) as f:
        details["timing"] = json.load(f)
    results["iteration_time_ratio"] = details["timing"]["full_ratio"]
    for setting in args.settings:
        label_rate, box_rate = SETTINGS[setting]
        train = register_noisy_dataset(names["train"], label_rate, box_rate, seed=args.seed)
        entry: Dict[str, Any] = {}
        runs = {}
        # Most informative first: the target compares full and vanilla; clean is shared.
        for variant in ("vanilla", "full", "box_correction_only"):
            runs[variant] = run_variant(args, variant, train, names["val"],
                                        os.path.join(work, setting, variant))
            entry[variant] = _ap(runs[variant]["metrics"])
            details.setdefault(setting, {})[f"{variant}_training_correction"] = \
                training_correction_stats(runs[variant]["cfg"].OUTPUT_DIR)
        run = runs["full"]
        report_file = os.path.join(work, setting, "full", "correction_report.json")
        if not os.path.isfile(report_file):
            model = run["model"] or load_model(run["cfg"])
            corrected, report = correct_dataset(run["cfg"], model, train)
            atomic_write_json(os.path.join(work, setting, "full", "corrected_train.json"),
                              corrected)
            atomic_write_json(report_file, report, indent=2)
            if setting == "l40_b40":
                draw_boxes_png(corrected, MetadataCatalog.get(train).image_root,
                               f"{base}_boxes.png")
        with open(report_file) as f:
            report = json.load(f)
        entry.update({k: report[k] for k in ("noisy_mean_iou", "corrected_mean_iou",
                                             "noisy_label_accuracy", "corrected_label_accuracy")})
        clean = run_variant(args, "clean", names["train"], names["val"],
                            os.path.join(work, "clean"))
        entry["clean"] = _ap(clean["metrics"])
        results[setting] = entry
        _write(args, results, details, base)
    _write(args, results, details, base)
    _print_table(results)
    return results


def _ap(metrics: Dict[str, Any]) -> Dict[str, float]:
    box = metrics.get("bbox", metrics)
    return {"AP": round(float(box["AP"]), 2), "AP50": round(float(box["AP50"]), 2)}


def _write(args, results, details, base) -> None:
    atomic_write_json(args.out, results, indent=2)
    atomic_write_json(f"{base}_details.json", details, indent=2)


def _print_table(results: Dict[str, Any]) -> None:
    from tabulate import tabulate

    rows = []
    for setting, s in results.items():
        if not isinstance(s, dict):
            continue
        rows.append([setting] + [f"{s[v]['AP']:.1f} / {s[v]['AP50']:.1f}" for v in
                                 ("vanilla", "box_correction_only", "full", "clean")] +
                    [f"{s['noisy_mean_iou']:.3f} -> {s['corrected_mean_iou']:.3f}",
                     f"{s['noisy_label_accuracy']:.3f} -> {s['corrected_label_accuracy']:.3f}"])
    print(tabulate(rows, headers=["noise", "vanilla AP/AP50", "box corr. only", "full", "clean",
                                  "train box IoU", "train label acc."], tablefmt="github"))
    print(f"iteration time ratio (full / vanilla): {results['iteration_time_ratio']:.2f}")


if __name__ == "__main__":
    main(parse_args())
