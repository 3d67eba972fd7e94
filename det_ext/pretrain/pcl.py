# Copyright (c) det_ext authors.
"""PCL (Prototypical Contrastive Learning): k-means E-step and ProtoNCE M-step.

E-step (each epoch after warm-up): k-means at several granularities on momentum-encoder features
of the training set; per granularity the sample-to-cluster map, L2-normalised centroids and the
per-cluster concentration phi = mean(||v - c||) / log(n + alpha), clusters with n <= 1 set to the
largest phi, clipped to its [10, 90] percentiles and rescaled to mean tau.
M-step: loss = InfoNCE + (1 / M) sum_m CE(q . [c_pos; c_neg]^T / phi, i).
"""
from __future__ import annotations


from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .moco import MomentumContrast

__all__ = ["kmeans", "cluster_density", "run_e_step", "proto_logits", "PCL"]


def _assign(x: torch.Tensor, c: torch.Tensor, chunk: int = 8192
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each point, in row chunks (memory chunk x k): (sq. distance, index)."""
    c_sq = (c * c).sum(1)[None]
    dists, ids = [], []
    for part in torch.split(x, chunk):
        d = ((part * part).sum(1, keepdim=True) - 2.0 * part @ c.T + c_sq).clamp_min_(0.0)
        m, i = d.min(dim=1)
        dists.append(m)
        ids.append(i)
    return torch.cat(dists), torch.cat(ids)


def kmeans(x: torch.Tensor, k: int, niter: int = 20, nredo: int = 1, seed: int = 0
           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with random-sample initialisation, keeping the best of ``nredo`` runs.

    Empty clusters are re-seeded with the points farthest from their centroids.

    Args:
        x (Tensor): points [N, d] (float).
        k (int): number of clusters (<= N).
        niter (int): iterations per run.
        nredo (int): restarts; the run with the lowest sum of squared distances is kept.
        seed (int): random seed.

    Returns:
        (Tensor, Tensor, Tensor): centroids [k, d], assignment [N] (long), squared distance of
        each point to its centroid [N].
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means: {k} clusters for {n} points")
    gen = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(max(1, nredo)):
        cent = x[torch.randperm(n, generator=gen)[:k].to(x.device)].clone()
        for _ in range(niter + 1):
            dist_own, assign = _assign(x, cent)
            counts = torch.bincount(assign, minlength=k)
            sums = torch.zeros_like(cent).index_add_(0, assign, x)
            new = sums / counts.clamp_min(1)[:, None].to(x.dtype)
            empty = (counts == 0).nonzero().flatten()
            if len(empty):
                far = torch.argsort(dist_own, descending=True)[:len(empty)]  # re-seed empties
                new[empty] = x[far]
            cent = new
        dist_own, assign = _assign(x, cent)
        obj = float(dist_own.sum())
        if best is None or obj < best[0]:
            best = (obj, cent, assign, dist_own)
    return best[1], best[2], best[3]


def cluster_density(sq_dist: torch.Tensor, assign: torch.Tensor, k: int, temperature: float,
                    alpha: float = 10.0, clip: Sequence[float] = (10.0, 90.0)) -> torch.Tensor:
    """Per-cluster concentration phi (PCL).

    Args:
        sq_dist (Tensor): [N] squared distance of each point to its centroid.
        assign (Tensor): [N] cluster of each point.
        k (int): number of clusters.
        temperature (float): tau; the result has mean tau.
        alpha (float): smoothing in log(n + alpha).
        clip (tuple): percentiles phi is clipped to.

    Returns:
        Tensor: phi [k].
    """
    counts = torch.bincount(assign, minlength=k).to(sq_dist.dtype)
    sums = torch.zeros(k, dtype=sq_dist.dtype, device=sq_dist.device).index_add_(
        0, assign, sq_dist.sqrt())
    phi = sums / counts.clamp_min(1) / torch.log(counts + alpha)
    small = counts <= 1
    if (~small).any():
        phi[small] = phi[~small].max()
    else:
        phi[:] = 1.0
    lo, hi = torch.quantile(phi, torch.tensor([clip[0] / 100.0, clip[1] / 100.0],
                                              dtype=phi.dtype, device=phi.device))
    phi = phi.clamp(float(lo), float(hi))
    return temperature * phi / phi.mean()


def run_e_step(features: torch.Tensor, num_clusters: Sequence[int], temperature: float,
               niter: int = 20, nredo: int = 1, alpha: float = 10.0,
               clip: Sequence[float] = (10.0, 90.0)) -> Dict[str, List[torch.Tensor]]:
    """k-means at every granularity (seed = granularity index, as the reference).

    Args:
        features (Tensor): [N, d] L2-normalised momentum features of the whole training set.

    Returns:
        dict: ``im2cluster`` (list of [N] long), ``centroids`` (list of [k, d], L2-normalised),
        ``density`` (list of [k]).
    """
    result: Dict[str, List[torch.Tensor]] = {"im2cluster": [], "centroids": [], "density": []}
    x = features.float()
    for seed, k in enumerate(num_clusters):
        k = min(int(k), x.shape[0])
        cent, assign, sq = kmeans(x, k, niter=niter, nredo=nredo, seed=seed)
        result["im2cluster"].append(assign)
        result["centroids"].append(F.normalize(cent, dim=1))
        result["density"].append(cluster_density(sq, assign, k, temperature, alpha, clip))
    return result


def proto_logits(q: torch.Tensor, index: torch.Tensor, im2cluster: torch.Tensor,
                 centroids: torch.Tensor, density: torch.Tensor, num_neg: int,
                 generator: Optional[torch.Generator] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """ProtoNCE logits for one granularity.

    Args:
        q (Tensor): queries [N, d], L2-normalised.
        index (Tensor): [N] dataset indices of the batch.
        im2cluster (Tensor): [num_samples] cluster of every training sample.
        centroids (Tensor): [k, d]; density (Tensor): [k] (phi).
        num_neg (int): r, negative prototypes drawn from the clusters that are no batch positive
            (capped at their number).

    Returns:
        (Tensor, Tensor): logits [N, N + r'] = q . [c_pos; c_neg]^T / phi[[pos; neg]], targets
        [N] = arange(N) (row i's positive is column i).
    """
    pos = im2cluster[index.to(im2cluster.device)]
    allowed = torch.ones(centroids.shape[0], dtype=torch.bool, device=centroids.device)
    allowed[pos] = False
    candidates = allowed.nonzero().flatten()
    r = min(int(num_neg), len(candidates))
    neg = candidates[torch.randperm(len(candidates), generator=generator)[:r].to(candidates.device)]
    ids = torch.cat([pos, neg])
    logits = (q @ centroids[ids].to(q.dtype).T) / density[ids].to(q.dtype)[None]
    return logits, torch.arange(q.shape[0], device=q.device)


class PCL(MomentumContrast):
    """PCL model: MoCo engine + ProtoNCE over the E-step's clusters (``set_clusters``).

    Args:
        num_neg_protos (int): r.
        **kwargs: :class:`MomentumContrast` arguments.
    """

    def __init__(self, encoder_q, num_neg_protos: int = 16384, **kwargs):
        super().__init__(encoder_q, **kwargs)
        self.num_neg_protos = num_neg_protos
        self.clusters: Optional[Dict[str, List[torch.Tensor]]] = None

    def set_clusters(self, clusters: Optional[Dict[str, List[torch.Tensor]]]) -> None:
        """Installs the E-step result (None: InfoNCE only, as during warm-up)."""
        self.clusters = clusters

    def forward(self, batch: Dict[str, torch.Tensor], epoch: int = 0) -> Dict[str, torch.Tensor]:
        """Args: batch with ``img_q``, ``img_k`` [N, 3, H, W] and ``index`` [N].

        Returns: losses ``loss_inst`` and (after warm-up) ``loss_proto``.
        """
        out_q, k, loss_inst = self.instance_step(batch["img_q"], batch["img_k"])
        losses = {"loss_inst": loss_inst}
        if self.clusters is not None:
            q = out_q["embedding"]
            terms = []
            for assign, cent, phi in zip(self.clusters["im2cluster"], self.clusters["centroids"],
                                         self.clusters["density"]):
                logits, target = proto_logits(q, batch["index"], assign, cent, phi,
                                              self.num_neg_protos)
                terms.append(F.cross_entropy(logits, target))
            losses["loss_proto"] = sum(terms) / len(terms)
        self.enqueue(k)
        return losses


