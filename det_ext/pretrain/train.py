# Copyright (c) det_ext authors.
"""The pre-training loop: epochs, PCL E-steps, LR schedule, optional mixed precision, logging with
ETA, and resumable checkpoints in the reference repositories' format
(``{'epoch', 'arch', 'state_dict' (module.encoder_q. ...), 'optimizer'}``, plus ``grad_scaler``
with float16)."""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import time
from contextlib import AbstractContextManager
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from det_ext.utils.io import atomic_open, atomic_write_json

from .background import BackgroundSwap
from .build import METHODS_WITH_LABELS, build_pretrain_model
from .data import ClassAwareSampler, SampleSet, ViewDataset, build_transforms, load_sample_set
from .pcl import run_e_step

__all__ = ["PretrainRunner", "learning_rate", "instance_temperature", "compute_features",
           "autocast_for"]

logger = logging.getLogger(__name__)


def learning_rate(solver, epoch: int) -> float:
    """LR of ``epoch`` (cosine over EPOCHS, or steps at STEPS x GAMMA)."""
    lr = solver.BASE_LR
    if solver.COSINE:
        return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / solver.EPOCHS))
    return lr * solver.GAMMA ** sum(epoch >= s for s in solver.STEPS)


def instance_temperature(moco, epochs: float) -> float:
    """InfoNCE temperature after ``epochs`` (fractional) of training.

    ``MOCO.TEMPERATURE_SCHEDULE`` "constant": ``TEMPERATURE``; "cosine" (Kukleva et al., ICLR
    2023): tau_min + (tau_max - tau_min) (1 + cos(2 pi epochs / period)) / 2, starting at tau_max.
    """
    if moco.TEMPERATURE_SCHEDULE == "constant":
        return moco.TEMPERATURE
    low, high = moco.TEMPERATURE_RANGE
    phase = 2.0 * math.pi * epochs / moco.TEMPERATURE_PERIOD
    return low + (high - low) * 0.5 * (1.0 + math.cos(phase))


def autocast_for(amp, device: torch.device) -> AbstractContextManager:
    """``torch.autocast`` on ``device`` as ``PRETRAIN.SOLVER.AMP`` asks (disabled when not
    ``ENABLED``; ``DTYPE`` "bfloat16" or "float16", checked by the config builder)."""
    return torch.autocast(device.type, dtype=getattr(torch, amp.DTYPE), enabled=bool(amp.ENABLED))


@torch.no_grad()
def compute_features(encoder: torch.nn.Module, images: torch.Tensor, transform,
                     batch_size: int = 256, key: str = "embedding",
                     autocast: Optional[AbstractContextManager] = None) -> torch.Tensor:
    """Eval-mode outputs of ``encoder`` on every sample (split over processes, then summed).

    Args:
        images (Tensor): [N, 3, S, S] uint8.
        key (str): ``"embedding"`` (L2-normalised head output) or ``"features"`` (pooled trunk).
        autocast: a reusable ``torch.autocast`` context for the forward passes (default: none);
            the result is float32 either way.

    Returns:
        Tensor: [N, d] on CPU, identical on every process.
    """
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    n, world, rank = images.shape[0], comm.get_world_size(), comm.get_rank()
    mine = torch.arange(rank, n, world)
    out: Optional[torch.Tensor] = None
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        x = torch.stack([transform(images[i]) for i in idx.tolist()]).to(device)
        with autocast if autocast is not None else contextlib.nullcontext():
            f = encoder.features(x) if key == "features" else encoder(x)[key]
        if out is None:
            out = torch.zeros(n, f.shape[1], device=device)
        out[idx.to(device)] = f.float()
    if world > 1:
        dist.all_reduce(out)
    encoder.train(was_training)
    return out.cpu()


class PretrainRunner:
    """Runs pre-training as configured; resumable from ``OUTPUT_DIR/checkpoint_last.pth.tar``.

    Args:
        cfg (CfgNode): a pre-training config (:func:`det_ext.config.pretrain.get_pretrain_cfg`).
        samples (SampleSet or None): training samples (default: from ``cfg.PRETRAIN.DATA``).
    """

    def __init__(self, cfg, samples: Optional[SampleSet] = None):
        self.cfg = cfg
        p = cfg.PRETRAIN
        self.world, self.rank = comm.get_world_size(), comm.get_rank()
        self.device = torch.device(cfg.DEVICE)
        swap = p.AUG.BACKGROUND_SWAP_PROB
        self.samples = samples or load_sample_set(p.DATA, seed=max(cfg.SEED, 0), masks=swap > 0)
        self.method = p.METHOD
        if self.method in METHODS_WITH_LABELS and bool((self.samples.labels < 0).any()):
            raise ValueError(f"method '{self.method}' needs a label for every sample")
        torch.manual_seed(max(cfg.SEED, 0))  # same initial weights for the same seed
        self.model = build_pretrain_model(cfg, self.samples.num_classes).to(self.device)
        if hasattr(self.model, "set_class_prior"):  # MoPro's logit adjustment
            known = self.samples.labels[self.samples.labels >= 0]
            self.model.set_class_prior(torch.bincount(known, minlength=self.samples.num_classes))
        self.net = (DistributedDataParallel(self.model, find_unused_parameters=True)
                    if self.world > 1 else self.model)
        params = [q for q in self.model.parameters() if q.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=p.SOLVER.BASE_LR, momentum=p.SOLVER.MOMENTUM,
                                         weight_decay=p.SOLVER.WEIGHT_DECAY)
        if p.SOLVER.BATCH_SIZE % self.world:
            raise ValueError("PRETRAIN.SOLVER.BATCH_SIZE must be divisible by the process count")
        self.batch = p.SOLVER.BATCH_SIZE // self.world
        size = p.DATA.INPUT_SIZE
        kind_q = "weak" if self.method == "mopro" else "strong"
        self.dataset = ViewDataset(
            self.samples, build_transforms(p.AUG, size, kind_q),
            build_transforms(p.AUG, size, "strong"),
            BackgroundSwap(self.samples.backgrounds, swap) if swap > 0 else None)
        self.eval_transform = build_transforms(p.AUG, size, "eval")
        self.autocast = autocast_for(p.SOLVER.AMP, self.device)
        float16 = bool(p.SOLVER.AMP.ENABLED) and p.SOLVER.AMP.DTYPE == "float16"
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=float16)
        self.start_epoch = 0
        self.history: List[Dict[str, float]] = []

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_path(self, name: str = "checkpoint_last.pth.tar") -> str:
        return os.path.join(self.cfg.OUTPUT_DIR, name)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The model's state dict with DDP's ``module.`` prefix (as the reference files)."""
        return {("module." + k): v.detach().cpu() for k, v in self.model.state_dict().items()}

    def save(self, epoch: int) -> None:
        """Saves ``{'epoch': epoch + 1, 'arch', 'state_dict', 'optimizer'}`` (rank 0, atomic)."""
        if self.rank != 0:
            return
        blob = {"epoch": epoch + 1, "arch": self.cfg.PRETRAIN.MODEL.ARCH,
                "state_dict": self.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.grad_scaler.is_enabled():
            blob["grad_scaler"] = self.grad_scaler.state_dict()
        names = ["checkpoint_last.pth.tar"]
        if (epoch + 1) % self.cfg.PRETRAIN.SOLVER.CHECKPOINT_PERIOD == 0 or \
                epoch + 1 == self.cfg.PRETRAIN.SOLVER.EPOCHS:
            names.append(f"checkpoint_{epoch + 1:04d}.pth.tar")
        for name in names:
            with atomic_open(self.checkpoint_path(name), "wb") as f:
                torch.save(blob, f)
        atomic_write_json(self.checkpoint_path("pretrain_log.json"), self.history, indent=1)

    def resume(self) -> bool:
        """Loads ``checkpoint_last.pth.tar`` if present; returns whether it did."""
        path = self.checkpoint_path()
        if not os.path.isfile(path):
            return False
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state = {k[len("module."):]: v for k, v in blob["state_dict"].items()}
        self.model.load_state_dict(state)
        self.optimizer.load_state_dict(blob["optimizer"])
        if self.grad_scaler.is_enabled() and "grad_scaler" in blob:
            self.grad_scaler.load_state_dict(blob["grad_scaler"])
        self.start_epoch = int(blob["epoch"])
        log = self.checkpoint_path("pretrain_log.json")
        if os.path.isfile(log):
            with open(log) as f:
                self.history = json.load(f)[:self.start_epoch]
        logger.info("resumed from %s at epoch %d", path, self.start_epoch)
        return True

    # ---------------------------------------------------------------- training
    def _loaders(self, epoch: int):
        n_iter = len(self.dataset) // (self.batch * self.world)
        if n_iter == 0:
            raise ValueError(f"{len(self.dataset)} samples are fewer than one batch "
                             f"({self.batch * self.world})")
        rebalancing = self._rebalancing()
        if rebalancing is not None:
            sampler = self._class_aware_sampler(*rebalancing, n_iter * self.batch, epoch)
        elif self.world > 1:
            sampler = DistributedSampler(self.dataset, shuffle=True, seed=self.cfg.SEED)
            sampler.set_epoch(epoch)
        else:
            gen = torch.Generator().manual_seed(self.cfg.SEED * 1000 + epoch)
            sampler = RandomSampler(self.dataset, generator=gen)
        kw = dict(batch_size=self.batch, drop_last=True, num_workers=self.cfg.PRETRAIN.NUM_WORKERS)
        main = DataLoader(self.dataset, sampler=sampler, **kw)
        if self.method != "iccl" or not self.model.uses_class_aware_sampler:
            return main, None, n_iter
        ca = self._class_aware_sampler(self.samples.labels,
                                       self.cfg.PRETRAIN.ICCL.CLASS_AWARE_EXPONENT,
                                       n_iter * self.batch, epoch)
        return main, DataLoader(self.dataset, sampler=ca, **kw), n_iter

    def _class_aware_sampler(self, groups: torch.Tensor, exponent: float, num_samples: int,
                             epoch: int) -> ClassAwareSampler:
        """This rank's class-aware sampler of ``num_samples`` draws over ``groups`` [N]."""
        sampler = ClassAwareSampler(groups, num_samples, exponent,
                                    seed=self.cfg.SEED * 7919 + self.rank)
        sampler.set_epoch(epoch)
        return sampler

    def _rebalancing(self) -> Optional[Tuple[torch.Tensor, float]]:
        """Groups and exponent of a re-balanced main sampler, or None for instance sampling.

        MoPro (``MOPRO.SAMPLER_EXPONENT``): the (noisy) labels. PCL (``PCL.SAMPLER_EXPONENT``,
        after warm-up): the last E-step's clusters at the coarsest granularity, so that no label
        is used.
        """
        if self.method == "mopro" and self.cfg.PRETRAIN.MOPRO.SAMPLER_EXPONENT != 1.0:
            return self.samples.labels, self.cfg.PRETRAIN.MOPRO.SAMPLER_EXPONENT
        pcl = self.cfg.PRETRAIN.PCL
        clusters = getattr(self.model, "clusters", None)
        if self.method == "pcl" and pcl.SAMPLER_EXPONENT != 1.0 and clusters is not None:
            coarsest = list(pcl.NUM_CLUSTERS).index(min(pcl.NUM_CLUSTERS))
            return clusters["im2cluster"][coarsest].cpu(), pcl.SAMPLER_EXPONENT
        return None

    def e_step(self, epoch: int) -> None:
        """PCL: clusters from momentum features of the whole training set (eval transform)."""
        c = self.cfg.PRETRAIN.PCL
        if epoch < c.WARMUP_EPOCHS:
            self.model.set_clusters(None)
            return
        t0 = time.perf_counter()
        feats = compute_features(self.model.encoder_k, self.samples.images, self.eval_transform,
                                 autocast=self.autocast)
        clusters = run_e_step(feats.to(self.device), c.NUM_CLUSTERS,
                              self.cfg.PRETRAIN.MOCO.TEMPERATURE,
                              c.KMEANS_ITERS, c.KMEANS_REDO, c.DENSITY_ALPHA, c.DENSITY_CLIP)
        self.model.set_clusters({k: [t.to(self.device) for t in v] for k, v in clusters.items()})
        logger.info("epoch %d E-step: k-means %s in %.1fs", epoch, list(c.NUM_CLUSTERS),
                    time.perf_counter() - t0)

    def train(self) -> List[Dict[str, float]]:
        """Trains from ``start_epoch`` to ``EPOCHS``; returns per-epoch mean losses."""
        solver = self.cfg.PRETRAIN.SOLVER
        self.net.train()
        t_start, done_iters = time.perf_counter(), 0
        for epoch in range(self.start_epoch, solver.EPOCHS):
            torch.manual_seed(self.cfg.SEED * 1000 + epoch + 7 * self.rank)
            lr = learning_rate(solver, epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if self.method == "pcl":
                self.e_step(epoch)
            main, class_aware, n_iter = self._loaders(epoch)
            sums: Dict[str, float] = {}
            batches = (zip(main, class_aware) if class_aware is not None
                       else ((b, None) for b in main))
            for it, (batch, batch_b) in enumerate(batches):
                self.model.instance_temperature = instance_temperature(
                    self.cfg.PRETRAIN.MOCO, epoch + it / n_iter)
                batch = {k: v.to(self.device) for k, v in batch.items()}
                if batch_b is not None:
                    batch["img_b"] = batch_b["img_q"].to(self.device)
                    batch["target_b"] = batch_b["target"].to(self.device)
                with self.autocast:
                    out = self.net(batch, epoch)
                    loss = sum(v for k, v in out.items() if k.startswith("loss_"))
                self.optimizer.zero_grad()
                self.grad_scaler.scale(loss).backward()
                self.grad_scaler.step(self.optimizer)
                self.grad_scaler.update()
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                done_iters += 1
                if (it + 1) % 20 == 0 or it + 1 == n_iter:
                    per_iter = (time.perf_counter() - t_start) / done_iters
                    left = per_iter * ((solver.EPOCHS - epoch) * n_iter - it - 1)
                    logger.info("epoch %d/%d iter %d/%d loss %.4f lr %.4g eta %s", epoch + 1,
                                solver.EPOCHS, it + 1, n_iter, loss.item(), lr,
                                datetime.timedelta(seconds=int(left)))
            self.history.append({"epoch": epoch + 1, "lr": lr,
                                 **{k: v / max(n_iter, 1) for k, v in sums.items()}})
            self.save(epoch)
        return self.history
