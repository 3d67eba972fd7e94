# Copyright (c) det_ext authors.
"""Stages of the LT-Shapes pre-training benchmark (``benchmarks/pretrain_lt_shapes.py``).

Each stage is one job of :func:`det_ext.utils.jobs.run_jobs`: the random network's linear probes,
one method's pre-training and probes, or one detector trained from a converted backbone (or
from scratch) with one seed. A stage seeds everything it draws from, so its result does not
depend on which stages ran before it in the same process; the stages can therefore run in
parallel worker processes. They live in the package, not in the benchmark script, so that those
workers can import them.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from typing import Any, Dict, Optional, Tuple

import torch
from detectron2.utils.logger import setup_logger

from ..data import LTShapesSpec, register_lt_shapes
from ..engine import DetExtTrainer, build_config
from .cli import build_pretrain_config
from .convert import convert_checkpoint
from .data import build_transforms, load_sample_set, with_label_noise
from .encoder import ResNetEncoder
from .probe import low_shot_probe, probe_accuracy, tail_classes, train_linear_probe
from .train import PretrainRunner, compute_features

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METHODS = ("instance_only", "pcl", "mopro", "iccl")
DETECTION = ("random", "pcl", "mopro", "iccl")
# checkpoint format of each method for the converter (the instance-only baseline is ICCL's model)
CONVERT_FORMAT = {"instance_only": "iccl", "pcl": "pcl", "mopro": "mopro", "iccl": "iccl"}
logger = logging.getLogger("det_ext.bench")


def register_datasets(args: argparse.Namespace) -> Dict[str, str]:
    """Registers the benchmark's LT-Shapes world (``--seed``, ``--train-images``,
    ``--val-images``) and returns its dataset names ({"train", "val"})."""
    if not (args.train_images or args.val_images):
        if args.seed == 0:
            return register_lt_shapes()
        return register_lt_shapes(LTShapesSpec(seed=args.seed), prefix=f"lt_shapes_seed{args.seed}")
    spec = LTShapesSpec(seed=args.seed, num_train_images=args.train_images or 2500,
                        num_val_images=args.val_images or 400)
    return register_lt_shapes(spec, prefix=f"lt_shapes_bench_{spec.digest()}")


def resolve_amp(choice: str, device: str = "cpu") -> str:
    """``--amp`` for the pre-trainings on ``device`` (the configs' ``DEVICE``): "auto" is
    "bfloat16" on a GPU that supports it and on a CPU with bfloat16 instructions (AVX512-BF16
    or AMX; 1.6x faster pre-training there), else "off". "bfloat16" and "off" are taken as they
    are. ICCL's interpolated images go through in float32 either way
    (``PRETRAIN.ICCL.MIXED_FORWARD_FLOAT32``; docs/backbones_exploration.md, tenth and eleventh
    rounds)."""
    if choice != "auto":
        return choice
    if device.startswith("cuda"):
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        native = any(getattr(torch.cpu, f"_is_{name}_supported", lambda: False)()
                     for name in ("avx512_bf16", "amx_tile"))  # private helpers: absent = no
    return "bfloat16" if native else "off"


def pretrain_config(method: str, args: argparse.Namespace, names: Dict[str, str]):
    """The pre-training config of ``method`` (``configs/pretrain/{method}_R18_lt_shapes.yaml``)
    with the benchmark's work dir, seed, dataset, ``--amp`` (resolved), ``--epochs`` and
    ``--pretrain-opts``."""
    opts = ["OUTPUT_DIR", os.path.join(args.work_dir, "pretrain", method), "SEED", str(args.seed),
            "PRETRAIN.DATA.DATASETS", f"('{names['train']}',)"]
    if args.amp != "off":
        opts += ["PRETRAIN.SOLVER.AMP.ENABLED", "True", "PRETRAIN.SOLVER.AMP.DTYPE", args.amp]
    if args.epochs:
        opts += ["PRETRAIN.SOLVER.EPOCHS", str(args.epochs)]
    opts += list(args.pretrain_opts)
    return build_pretrain_config(os.path.join(REPO, "configs", "pretrain",
                                              f"{method}_R18_lt_shapes.yaml"), opts)


def converted_weights_path(name: str, work_dir: str) -> str:
    """Where the converted Detectron2 backbone of ``name`` is written ("" for random)."""
    if name == "random":
        return ""
    return os.path.join(work_dir, "pretrain", name, "backbone_d2.pkl")


class BenchmarkStages:
    """Runs the benchmark's stages; the crops are loaded on first use and kept.

    Args:
        args: the benchmark's parsed arguments (``work_dir``, ``seed``, ``amp`` (resolved),
            ``epochs``, ``det_iters``, ``shots``, ``pretrain_opts``, ``train_images``,
            ``val_images``).
    """

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.names = register_datasets(args)
        self._data: Optional[Tuple[Any, Any, torch.Tensor, Any]] = None

    def data(self) -> Tuple[Any, Any, torch.Tensor, Any]:
        """(training crops, validation crops, tail class ids [T], eval transform)."""
        if self._data is None:
            t0 = time.perf_counter()
            base = pretrain_config("pcl", self.args, self.names)
            masks = any(pretrain_config(m, self.args, self.names).PRETRAIN.AUG
                        .BACKGROUND_SWAP_PROB > 0 for m in METHODS)  # for background swaps
            train = load_sample_set(base.PRETRAIN.DATA, datasets=[self.names["train"]],
                                    noise=False, masks=masks)
            val = load_sample_set(base.PRETRAIN.DATA, datasets=[self.names["val"]], noise=False)
            tail = tail_classes(train.class_frequency)
            transform = build_transforms(base.PRETRAIN.AUG, base.PRETRAIN.DATA.INPUT_SIZE, "eval")
            logger.info("LT-Shapes crops: %d train, %d val (%.1fs); tail classes %s", len(train),
                        len(val), time.perf_counter() - t0, tail.tolist())
            self._data = (train, val, tail, transform)
        return self._data

    def data_summary(self) -> Dict[str, Any]:
        """Crop counts and tail classes, for the results' ``settings``."""
        train, val, tail, _ = self.data()
        return {"train_crops": len(train), "val_crops": len(val), "tail_classes": tail.tolist()}

    def probes(self, encoder: torch.nn.Module) -> Dict[str, Any]:
        """Linear probes of one encoder's frozen features: trained on every training crop
        (``linear_probe``) and on ``args.shots`` crops per class (``linear_probe_low_shot``)."""
        train, val, tail, transform = self.data()
        f_tr = compute_features(encoder, train.images, transform, key="features")
        f_va = compute_features(encoder, val.images, transform, key="features")
        clf = train_linear_probe(f_tr, train.clean_labels, train.num_classes, seed=self.args.seed)
        return {"linear_probe": probe_accuracy(clf, f_va, val.clean_labels, tail),
                "linear_probe_low_shot": low_shot_probe(
                    f_tr, train.clean_labels, f_va, val.clean_labels, train.num_classes,
                    shots=self.args.shots, seed=self.args.seed, tail=tail),
                "data": self.data_summary()}

    def probe_random(self) -> Dict[str, Any]:
        """Probes of a freshly initialised ResNet-18 (seeded with ``args.seed``)."""
        torch.manual_seed(self.args.seed)
        return self.probes(ResNetEncoder("resnet18", "mlp", 128))

    def pretrain(self, method: str) -> Dict[str, Any]:
        """Pre-trains ``method`` (resuming its last epoch; nothing left to train when it
        finished before) and probes its query encoder.

        Returns:
            The probes, ``seconds`` taken, ``trained_before`` (the stored pre-training had
            finished) and, for MoPro, ``mopro_noise`` (label noise rate, last epoch's log).
        """
        t = time.perf_counter()
        cfg = pretrain_config(method, self.args, self.names)
        samples = with_label_noise(self.data()[0], cfg.PRETRAIN.DATA, seed=self.args.seed)
        runner = PretrainRunner(cfg, samples)
        trained_before = runner.resume() and runner.start_epoch >= cfg.PRETRAIN.SOLVER.EPOCHS
        history = runner.train()
        out = self.probes(runner.model.encoder_q)
        if method == "mopro":
            out["mopro_noise"] = {
                "label_noise_rate": float((samples.labels != samples.clean_labels).float().mean()),
                "last_epoch": history[-1]}
        out.update(seconds=round(time.perf_counter() - t, 1), trained_before=trained_before)
        logger.info("%s linear probe: %s", method, out["linear_probe"])
        return out

    def detect(self, name: str, seed: int, convert: bool) -> Dict[str, Any]:
        """Trains and evaluates the LT-Shapes tiny Mask R-CNN
        (``configs/LT-Shapes/pretrained_R18_FPN_tiny.yaml``) initialised from ``name``'s
        converted backbone (random: no weights) with ``seed``, resuming a stopped run.

        Args:
            convert: convert the method's last checkpoint first (an error unless every
                Detectron2 ResNet entry is covered); its report is returned as ``conversion``.

        Returns:
            ``metrics`` (box AP, AP50, AP75, APr, APc, APf), ``seconds`` and ``conversion``.
        """
        t = time.perf_counter()
        args, conversion = self.args, None
        weights = converted_weights_path(name, args.work_dir)
        if weights and (convert or not os.path.isfile(weights)):
            checkpoint = os.path.join(os.path.dirname(weights), "checkpoint_last.pth.tar")
            conversion = convert_checkpoint(checkpoint, weights, CONVERT_FORMAT[name]).summary()
        out = os.path.join(args.work_dir, "detection", name, f"seed{seed}")
        steps = sorted({s for s in (int(args.det_iters * 0.75), int(args.det_iters * 0.9))
                        if 0 < s < args.det_iters})
        opts = ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", out, "SEED", str(seed),
                "DATASETS.TRAIN", f"('{self.names['train']}',)",
                "DATASETS.TEST", f"('{self.names['val']}',)",
                "SOLVER.MAX_ITER", str(args.det_iters), "SOLVER.STEPS", str(tuple(steps)),
                "SOLVER.WARMUP_ITERS", str(min(100, args.det_iters // 4)), "TEST.EVAL_PERIOD", "0"]
        cfg = build_config(os.path.join(REPO, "configs/LT-Shapes/pretrained_R18_FPN_tiny.yaml"),
                           opts)
        os.makedirs(out, exist_ok=True)
        trainer = DetExtTrainer(cfg)
        trainer.resume_or_load(resume=True)
        trainer.train()
        with open(os.path.join(out, "metrics.json")) as f:
            bbox = json.load(f)["bbox"]
        metrics = {k: bbox[k] for k in ("AP", "AP50", "AP75", "APr", "APc", "APf") if k in bbox}
        logger.info("%s detection, seed %d: %s", name, seed, metrics)
        return {"metrics": metrics, "seconds": round(time.perf_counter() - t, 1),
                "conversion": conversion}

    def run(self, stage: Tuple[Any, ...]) -> Dict[str, Any]:
        """Runs one stage: ("probe", "random"), ("pretrain", method) or
        ("detect", name, seed, convert)."""
        kind, name, *params = stage
        if kind == "probe":  # without pre-training, only the random network is probed
            return self.probe_random()
        return {"pretrain": self.pretrain, "detect": self.detect}[kind](name, *params)


_WORKER: Optional[BenchmarkStages] = None


def init_worker(args: argparse.Namespace, threads: int) -> None:
    """Sets up a process that runs stages: ``threads`` torch threads, loggers, datasets."""
    global _WORKER
    torch.set_num_threads(threads)
    setup_logger(name="det_ext")
    setup_logger(name="detectron2")
    _WORKER = BenchmarkStages(args)


def run_stage(stage: Tuple[Any, ...]) -> Dict[str, Any]:
    """Runs one stage in a process set up by :func:`init_worker`."""
    if _WORKER is None:
        raise RuntimeError("run_stage() called before init_worker()")
    return _WORKER.run(stage)
