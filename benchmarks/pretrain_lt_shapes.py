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
batch 64, bfloat16 where the CPU has it: --amp), detection --det-iters iterations
of 8 images, repeated with --det-seeds training seeds (box AP = their mean; the same seed gives
every initialisation the same head initialisation and data order, so the runs pair up). The stages
(pre-trainings with their probes, then detectors) run --jobs at a time in worker processes, one per
core by default (det_ext/pretrain/lt_shapes_benchmark.py); each is seeded on its own, so the results
do not depend on --jobs, only on the torch threads per stage. Every stage's result is kept in
WORK_DIR/state.json as it finishes and pre-training resumes from its last epoch, so a killed run
picks up where it stopped. Output (percent)::

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
        [--seed 0] [--epochs 0] [--amp auto] [--det-iters 400] [--det-seeds 1] \
        [--shots 1 2 4 8 16] [--work-dir output/bench_pretrain] [--threads 2] [--jobs 0]
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
from detectron2.utils.logger import setup_logger

from det_ext.data.datasets import ensure_lt_shapes_generated
from det_ext.engine import run_cli
from det_ext.pretrain.lt_shapes_benchmark import (DETECTION, METHODS, init_worker,
                                                  pretrain_config, register_datasets,
                                                  resolve_amp, run_stage)
from det_ext.pretrain.probe import ACCURACY_KEYS
from det_ext.utils.io import atomic_write_json
from det_ext.utils.jobs import Job, run_jobs

logger = logging.getLogger("det_ext.bench")
# pre-trainings from the longest (ICCL: three batches per step, its mixed one in float32; PCL
# and MoPro: twice the epochs) to the shortest, so that parallel workers finish together
PRETRAIN_ORDER = ("iccl", "pcl", "mopro", "instance_only")


def _state(path: str) -> Dict[str, Any]:
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return {"linear_probe": {}, "detection": {}, "timing_s": {}}


def _probed(name: str, args, state: Dict[str, Any]) -> bool:
    """Whether ``state`` has every probe of ``name`` that this invocation asks for."""
    low_shot = state.get("linear_probe_low_shot", {}).get(name, {})
    return name in state["linear_probe"] and all(str(k) in low_shot for k in args.shots)


def _detection_seeds(args) -> List[str]:
    return [str(args.seed + k) for k in range(args.det_seeds)] if args.det_iters > 0 else []


def _pending_jobs(args, state: Dict[str, Any]) -> List[Job]:
    """The stages this invocation still has to run, longest first where the order is free:
    pre-trainings (each with its probes), the random network's probes, then the detectors,
    seed-major, each after its backbone's pre-training."""
    jobs = [Job(f"pretrain_{m}", ("pretrain", m)) for m in PRETRAIN_ORDER
            if not _probed(m, args, state)]
    if not _probed("random", args, state):
        jobs.append(Job("probe_random", ("probe", "random")))
    runs = state.get("detection_runs", {})
    for seed in _detection_seeds(args):
        for name in DETECTION:
            if seed in runs.get(name, {}):
                continue
            # a missing converted file is re-converted by the stage itself
            convert = name != "random" and name not in state.get("conversion", {})
            jobs.append(Job(f"detection_{name}_seed{seed}", ("detect", name, int(seed), convert),
                            after=() if name == "random" else (f"pretrain_{name}",)))
    return jobs


def _record(state: Dict[str, Any], job: Job, result: Dict[str, Any]) -> None:
    """Stores one finished stage's result in ``state``."""
    kind, name = job.payload[:2]
    if kind == "detect":
        seed = str(job.payload[2])
        state.setdefault("detection_runs", {}).setdefault(name, {})[seed] = result["metrics"]
        state["timing_s"][job.key] = result["seconds"]
        if result["conversion"] is not None:
            state.setdefault("conversion", {})[name] = result["conversion"]
        return
    state["linear_probe"][name] = result["linear_probe"]
    state.setdefault("linear_probe_low_shot", {})[name] = result["linear_probe_low_shot"]
    state["settings"].update(result["data"])
    if "mopro_noise" in result:
        state["mopro_noise"] = result["mopro_noise"]
    # a pre-training that had finished before (probes added later) keeps its first timing
    if kind == "pretrain" and not (result["trained_before"] and job.key in state["timing_s"]):
        state["timing_s"][job.key] = result["seconds"]


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
    jobs = args.jobs or args.threads
    threads = max(1, args.threads // jobs)
    torch.set_num_threads(threads)
    os.makedirs(args.work_dir, exist_ok=True)
    state_path = os.path.join(args.work_dir, "state.json")
    state = _state(state_path)
    t0 = time.perf_counter()
    names = register_datasets(args)
    # resolved once, on the pre-training device, so that every worker agrees
    requested, args.amp = args.amp, "off"
    args.amp = resolve_amp(requested, pretrain_config("pcl", args, names).DEVICE)
    logger.info("--amp %s: %s", requested, args.amp)
    ensure_lt_shapes_generated(names["train"])  # once, before the workers start
    configs = {m: pretrain_config(m, args, names) for m in METHODS}
    state["settings"] = {
        **state.get("settings", {}),  # keeps the crop counts of stages run before
        "seed": args.seed, "tail_groups": "r+c", "amp": args.amp,
        "epochs": {m: c.PRETRAIN.SOLVER.EPOCHS for m, c in configs.items()},
        "det_iters": args.det_iters, "det_seeds": args.det_seeds, "low_shot": args.shots,
        "input_size": configs["pcl"].PRETRAIN.DATA.INPUT_SIZE, "arch": "resnet18",
        # timings depend on these (e.g. AVX2 vs AVX-512 kernels on CPU)
        "machine": {"threads": threads, "processes": jobs, "torch": torch.__version__,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "cuda": torch.cuda.is_available()}}

    def record(job: Job, result: Dict[str, Any]) -> None:
        _record(state, job, result)
        atomic_write_json(state_path, state, indent=1)  # a killed run resumes from here

    pending = _pending_jobs(args, state)
    logger.info("%d stages to run, %d at a time with %d thread(s) each: %s", len(pending), jobs,
                threads, [j.key for j in pending])
    run_jobs(pending, run_stage, record, processes=jobs, initializer=init_worker,
             initargs=(args, threads))

    det_seeds = _detection_seeds(args)
    for name in DETECTION:  # averages over the seeds asked for this time
        runs = state.get("detection_runs", {}).get(name, {})
        done = {s: runs[s] for s in det_seeds if s in runs}
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
    p.add_argument("--epochs", type=int, default=0,
                   help="pre-training epochs of every method (0: each config's)")
    p.add_argument("--amp", choices=("auto", "bfloat16", "off"), default="auto",
                   help="bfloat16 autocast in pre-training (auto: on a CPU with bfloat16 "
                        "instructions or a GPU that supports it); detection stays float32")
    p.add_argument("--det-iters", type=int, default=400, help="detection iterations (0: skip)")
    p.add_argument("--det-seeds", type=int, default=1,
                   help="detection runs per initialisation, seeds SEED, SEED+1, ...; AP is their "
                        "mean (one run takes about 5 min on 2 CPU cores)")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16],
                   help="training crops per class of the low-shot linear probes")
    p.add_argument("--work-dir", default="output/bench_pretrain_lt_shapes",
                   help="intermediate results and checkpoints (resumed when present)")
    p.add_argument("--threads", type=int, default=2,
                   help="CPU threads in all (torch threads per stage = threads / jobs)")
    p.add_argument("--jobs", type=int, default=0,
                   help="stages run at once, each in its own process (0: one per thread); on a "
                        "small CPU, one single-threaded stage per core gets more done per minute")
    p.add_argument("--train-images", type=int, default=0,
                   help="smaller LT-Shapes world (0: the default 2500 training images)")
    p.add_argument("--val-images", type=int, default=0, help="(0: the default 400)")
    p.add_argument("--pretrain-opts", nargs="*", default=[],
                   help="KEY VALUE overrides applied to every pre-training config")
    args = p.parse_args(argv)
    if args.det_seeds < 1:
        p.error(f"--det-seeds must be at least 1, got {args.det_seeds}")
    if args.jobs < 0 or args.jobs > args.threads:
        p.error(f"--jobs must be between 0 and --threads ({args.threads}), got {args.jobs}")
    if min(args.shots) < 1:
        p.error(f"--shots must be at least 1, got {min(args.shots)}")
    return args


if __name__ == "__main__":
    run_cli(main, parse_args())
