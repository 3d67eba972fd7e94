#!/usr/bin/env python
# Copyright (c) det_ext authors.
"""Benchmark: short PCL / MoPro / ICCL pre-training of a ResNet-18 on LT-Shapes object crops,
then (a) a linear probe on frozen features (val crops; overall, class-balanced = mean per-class,
and tail = LVIS 'r' + 'c' classes), trained on all training crops and, as in PCL's low-shot
evaluation, on k crops per class (--shots, mean of 5 draws), against random initialisation and
the instance-only baseline, and (b) the LT-Shapes tiny Mask R-CNN
(configs/LT-Shapes/pretrained_R18_FPN_tiny.yaml) initialised from each converted backbone versus
random initialisation, same schedule.

Reduced CPU schedule (see docs/backbones.md): configs/pretrain/*_R18_lt_shapes.yaml (48 px inputs,
batch 128, --epochs epochs), detection --det-iters iterations of 8 images, repeated with
--det-seeds training seeds (box AP = their mean; the same seed gives every initialisation the same
head initialisation and data order, so the runs pair up). Every stage's result is
kept in WORK_DIR/state.json and pre-training resumes from its last epoch, so a killed run picks up
where it stopped. Output (percent)::

    {"linear_probe": {"random": {"acc", "balanced_acc", "tail_acc"}, "instance_only": ...,
                      "pcl": ..., "mopro": ..., "iccl": ...},
     "linear_probe_low_shot": {method: {k: {"acc", "balanced_acc", "tail_acc", "acc_std"}}},
     "detection": {"random": {"AP", ..., "AP_per_seed", "AP_std"}, "pcl": ..., "mopro": ...,
                   "iccl": ...},
     "vs_random": {"linear_probe": {method: {"acc", "balanced_acc", "tail_acc"}},
                   "linear_probe_low_shot": {method: {k: {"acc", "balanced_acc", "tail_acc"}}},
                   "detection_AP": {method: d}, "detection_seeds_beating_random": {method: "k/n"},
                   "iccl_minus_instance_only_tail_acc": d},
     "settings": {...}, "timing_s": {...}}

Usage::

    flock /tmp/det_ext_heavy.lock python benchmarks/pretrain_lt_shapes.py --out results.json \
        [--seed 0] [--epochs 6] [--det-iters 400] [--det-seeds 1] [--shots 1 2 4 8 16] \
        [--work-dir output/bench_pretrain]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from typing import Any, Dict

import torch
from detectron2.utils.logger import setup_logger

from det_ext.data import LTShapesSpec, register_lt_shapes
from det_ext.engine import DetExtTrainer, build_config, run_cli
from det_ext.pretrain.cli import build_pretrain_config
from det_ext.pretrain.convert import convert_checkpoint
from det_ext.pretrain.data import build_transforms, load_sample_set, with_label_noise
from det_ext.pretrain.encoder import ResNetEncoder
from det_ext.pretrain.probe import (ACCURACY_KEYS, low_shot_probe, probe_accuracy,
                                    tail_classes, train_linear_probe)
from det_ext.pretrain.train import PretrainRunner, compute_features
from det_ext.utils.io import atomic_write_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("instance_only", "pcl", "mopro", "iccl")
DETECTION = ("random", "pcl", "mopro", "iccl")
logger = logging.getLogger("det_ext.bench")


def _state(path: str) -> Dict[str, Any]:
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return {"linear_probe": {}, "detection": {}, "timing_s": {}}


def _datasets(args) -> Dict[str, str]:
    if not (args.train_images or args.val_images):
        if args.seed == 0:
            return register_lt_shapes()
        return register_lt_shapes(LTShapesSpec(seed=args.seed), prefix=f"lt_shapes_seed{args.seed}")
    spec = LTShapesSpec(seed=args.seed, num_train_images=args.train_images or 2500,
                        num_val_images=args.val_images or 400)
    return register_lt_shapes(spec, prefix=f"lt_shapes_bench_{spec.digest()}")


def _pretrain_cfg(method: str, args, names):
    opts = ["OUTPUT_DIR", os.path.join(args.work_dir, "pretrain", method), "SEED", str(args.seed),
            "PRETRAIN.DATA.DATASETS", f"('{names['train']}',)"]
    if args.epochs:
        opts += ["PRETRAIN.SOLVER.EPOCHS", str(args.epochs)]
    opts += list(args.pretrain_opts)
    return build_pretrain_config(os.path.join(REPO, "configs", "pretrain",
                                              f"{method}_R18_lt_shapes.yaml"), opts)


def _probe(name: str, encoder, data, args, state: Dict[str, Any]) -> None:
    """Linear probes of one encoder's frozen features into ``state``: trained on every training
    crop (``linear_probe``) and on ``args.shots`` crops per class (``linear_probe_low_shot``).

    Args:
        data: (train, val, tail, transform) of the benchmark.
    """
    train, val, tail, transform = data
    f_tr = compute_features(encoder, train.images, transform, key="features")
    f_va = compute_features(encoder, val.images, transform, key="features")
    clf = train_linear_probe(f_tr, train.clean_labels, train.num_classes, seed=args.seed)
    state["linear_probe"][name] = probe_accuracy(clf, f_va, val.clean_labels, tail)
    state.setdefault("linear_probe_low_shot", {})[name] = low_shot_probe(
        f_tr, train.clean_labels, f_va, val.clean_labels, train.num_classes, shots=args.shots,
        seed=args.seed, tail=tail)


def _probed(name: str, args, state: Dict[str, Any]) -> bool:
    """Whether ``state`` has every probe of ``name`` that this invocation asks for."""
    low_shot = state.get("linear_probe_low_shot", {}).get(name, {})
    return name in state["linear_probe"] and all(str(k) in low_shot for k in args.shots)


def _detect(name: str, weights: str, args, names, seed: int) -> Dict[str, float]:
    out = os.path.join(args.work_dir, "detection", name, f"seed{seed}")
    opts = ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", out, "SEED", str(seed),
            "DATASETS.TRAIN", f"('{names['train']}',)", "DATASETS.TEST", f"('{names['val']}',)",
            "SOLVER.MAX_ITER", str(args.det_iters),
            "SOLVER.STEPS", str(tuple(sorted({s for s in (int(args.det_iters * 0.75),
                                                           int(args.det_iters * 0.9))
                                              if 0 < s < args.det_iters}))),
            "SOLVER.WARMUP_ITERS", str(min(100, args.det_iters // 4)), "TEST.EVAL_PERIOD", "0"]
    cfg = build_config(os.path.join(REPO, "configs/LT-Shapes/pretrained_R18_FPN_tiny.yaml"), opts)
    os.makedirs(out, exist_ok=True)
    trainer = DetExtTrainer(cfg)
    trainer.resume_or_load(resume=True)
    trainer.train()
    with open(os.path.join(out, "metrics.json")) as f:
        bbox = json.load(f)["bbox"]
    return {k: bbox[k] for k in ("AP", "AP50", "AP75", "APr", "APc", "APf") if k in bbox}


def _converted(name: str, args, state: Dict[str, Any]) -> str:
    """Detectron2 weights of one initialisation: "" for random, else the method's last
    pre-training checkpoint converted (once; an error unless fully covered)."""
    if name == "random":
        return ""
    directory = os.path.join(args.work_dir, "pretrain", name)
    weights = os.path.join(directory, "backbone_d2.pkl")
    if name not in state.get("conversion", {}) or not os.path.isfile(weights):
        report = convert_checkpoint(os.path.join(directory, "checkpoint_last.pth.tar"), weights,
                                    name)
        state.setdefault("conversion", {})[name] = report.summary()
    return weights


def _mean_over_seeds(runs: Dict[str, Dict[str, float]]) -> Dict[str, Any]:
    """Detection metrics averaged over training seeds.

    Args:
        runs: {seed: {"AP", "AP50", ...}} of one initialisation.

    Returns:
        The mean of every metric all runs have, the per-seed APs (``AP_per_seed``) and, with
        several seeds, their sample standard deviation (``AP_std``).
    """
    keys = set.intersection(*(set(r) for r in runs.values()))
    out: Dict[str, Any] = {k: round(statistics.fmean(r[k] for r in runs.values()), 3)
                           for k in sorted(keys)}
    out["AP_per_seed"] = {s: r["AP"] for s, r in runs.items()}
    if len(runs) > 1:
        out["AP_std"] = round(statistics.stdev(r["AP"] for r in runs.values()), 3)
    return out


def _differences(ours: Dict[str, float], reference: Dict[str, float]) -> Dict[str, float]:
    """Accuracy differences (points) for the probe metrics both results have."""
    return {k: round(ours[k] - reference[k], 2) for k in ACCURACY_KEYS
            if k in ours and k in reference}


def _gaps(state: Dict[str, Any]) -> Dict[str, Any]:
    """Differences (points) that the issue's targets read: each method's probe minus random
    initialisation's, ICCL's tail accuracy minus instance-only's, box AP (mean over detection
    seeds) minus random's, and in how many seeds each backbone beat random initialisation trained
    with the same seed (same head initialisation and data order)."""
    probe, det = state["linear_probe"], state["detection"]
    low_shot = state.get("linear_probe_low_shot", {})
    out: Dict[str, Any] = {"linear_probe": {}, "detection_AP": {}}
    for m in METHODS:
        if m in probe and "random" in probe:
            out["linear_probe"][m] = _differences(probe[m], probe["random"])
        if m in low_shot and "random" in low_shot:
            out.setdefault("linear_probe_low_shot", {})[m] = {
                k: _differences(r, low_shot["random"][k])
                for k, r in low_shot[m].items() if k in low_shot["random"]}
    if "iccl" in probe and "instance_only" in probe:
        out["iccl_minus_instance_only_tail_acc"] = round(
            probe["iccl"]["tail_acc"] - probe["instance_only"]["tail_acc"], 2)
    for m in DETECTION[1:]:
        if m in det and "random" in det:
            out["detection_AP"][m] = round(det[m]["AP"] - det["random"]["AP"], 2)
            ours, rand = det[m].get("AP_per_seed", {}), det["random"].get("AP_per_seed", {})
            paired = [s for s in ours if s in rand]
            if paired:
                wins = sum(ours[s] > rand[s] for s in paired)
                out.setdefault("detection_seeds_beating_random", {})[m] = f"{wins}/{len(paired)}"
    return out


def main(args) -> Dict[str, Any]:
    setup_logger(name="det_ext")
    setup_logger(name="detectron2")
    torch.set_num_threads(args.threads)
    os.makedirs(args.work_dir, exist_ok=True)
    state_path = os.path.join(args.work_dir, "state.json")
    state = _state(state_path)
    names = _datasets(args)
    base = _pretrain_cfg("pcl", args, names)
    t0 = time.perf_counter()
    masks = any(_pretrain_cfg(m, args, names).PRETRAIN.AUG.BACKGROUND_SWAP_PROB > 0
                for m in METHODS)  # instance masks and backgrounds for background swaps
    train = load_sample_set(base.PRETRAIN.DATA, datasets=[names["train"]], noise=False,
                            masks=masks)
    val = load_sample_set(base.PRETRAIN.DATA, datasets=[names["val"]], noise=False)
    tail = tail_classes(train.class_frequency)
    transform = build_transforms(base.PRETRAIN.AUG, base.PRETRAIN.DATA.INPUT_SIZE, "eval")
    state["settings"] = {"seed": args.seed, "train_crops": len(train), "val_crops": len(val),
                         "tail_classes": tail.tolist(), "tail_groups": "r+c",
                         "epochs": base.PRETRAIN.SOLVER.EPOCHS, "det_iters": args.det_iters,
                         "det_seeds": args.det_seeds, "low_shot": args.shots,
                         "input_size": base.PRETRAIN.DATA.INPUT_SIZE, "arch": "resnet18",
                         # timings depend on these (e.g. AVX2 vs AVX-512 kernels on CPU)
                         "machine": {"threads": args.threads, "torch": torch.__version__,
                                     "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                     "cuda": torch.cuda.is_available()}}
    logger.info("LT-Shapes crops: %d train, %d val (%.1fs); tail classes %s", len(train), len(val),
                time.perf_counter() - t0, tail.tolist())

    data = (train, val, tail, transform)
    if not _probed("random", args, state):
        torch.manual_seed(args.seed)
        _probe("random", ResNetEncoder("resnet18", "mlp", 128), data, args, state)
        atomic_write_json(state_path, state, indent=1)
    for method in METHODS:
        if _probed(method, args, state):
            continue
        t = time.perf_counter()
        cfg = _pretrain_cfg(method, args, names)
        samples = with_label_noise(train, cfg.PRETRAIN.DATA, seed=args.seed)
        runner = PretrainRunner(cfg, samples)
        trained_before = runner.resume() and runner.start_epoch >= cfg.PRETRAIN.SOLVER.EPOCHS
        history = runner.train()  # nothing left to train for a finished pre-training
        if method == "mopro":
            state.setdefault("mopro_noise", {})["label_noise_rate"] = \
                float((samples.labels != samples.clean_labels).float().mean())
            state["mopro_noise"]["last_epoch"] = history[-1]
        _probe(method, runner.model.encoder_q, data, args, state)
        key = f"pretrain_{method}"
        if not (trained_before and key in state["timing_s"]):  # a probe added later keeps it
            state["timing_s"][key] = round(time.perf_counter() - t, 1)
        atomic_write_json(state_path, state, indent=1)
        logger.info("%s linear probe: %s", method, state["linear_probe"][method])

    # seed-major, so that a run stopped early still has every initialisation on the same seeds
    det_seeds = [str(args.seed + k) for k in range(args.det_seeds)] if args.det_iters > 0 else []
    runs = {name: state.setdefault("detection_runs", {}).setdefault(name, {})
            for name in DETECTION}
    for seed in det_seeds:
        for name in DETECTION:
            if seed in runs[name]:
                continue
            t = time.perf_counter()
            runs[name][seed] = _detect(name, _converted(name, args, state), args, names,
                                       int(seed))
            state["timing_s"][f"detection_{name}_seed{seed}"] = round(time.perf_counter() - t, 1)
            atomic_write_json(state_path, state, indent=1)
            logger.info("%s detection, seed %s: %s", name, seed, runs[name][seed])
    for name in DETECTION:  # averages over the seeds asked for this time
        done = {s: runs[name][s] for s in det_seeds if s in runs[name]}
        if done:
            state["detection"][name] = _mean_over_seeds(done)
    state["vs_random"] = _gaps(state)
    state["timing_s"]["total_this_invocation"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(args.out, state, indent=1)
    return state


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--seed", type=int, default=0, help="LT-Shapes world seed and training seed")
    p.add_argument("--epochs", type=int, default=0, help="pre-training epochs (0: config's)")
    p.add_argument("--det-iters", type=int, default=400, help="detection iterations (0: skip)")
    p.add_argument("--det-seeds", type=int, default=1,
                   help="detection runs per initialisation, seeds SEED, SEED+1, ...; AP is their "
                        "mean (one run takes about 5 min on 2 CPU cores)")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16],
                   help="training crops per class of the low-shot linear probes")
    p.add_argument("--work-dir", default="output/bench_pretrain_lt_shapes",
                   help="intermediate results and checkpoints (resumed when present)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-images", type=int, default=0,
                   help="smaller LT-Shapes world (0: the default 2500 training images)")
    p.add_argument("--val-images", type=int, default=0, help="(0: the default 400)")
    p.add_argument("--pretrain-opts", nargs="*", default=[],
                   help="KEY VALUE overrides applied to every pre-training config")
    args = p.parse_args(argv)
    if args.det_seeds < 1:
        p.error(f"--det-seeds must be at least 1, got {args.det_seeds}")
    if min(args.shots) < 1:
        p.error(f"--shots must be at least 1, got {min(args.shots)}")
    return args


if __name__ == "__main__":
    run_cli(main, parse_args())
