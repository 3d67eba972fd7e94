# Copyright (c) det_ext authors.
"""The momentum-contrast engine shared by PCL, MoPro and ICCL.

Query encoder ``encoder_q`` (trained), key encoder ``encoder_k`` (momentum copy, no gradients),
a queue of negative keys [dim, K] and the InfoNCE logits of MoCo. Key batches are encoded with
shuffle-BN across processes, or, in one process, in shuffled chunks (see :meth:`encode_keys`).
"""
from __future__ import annotations

import copy
from typing import Dict, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["MomentumContrast", "concat_all_gather"]


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenates ``x`` [n, ...] from every process along dim 0 (no gradient); identity in one
    process. All processes must pass the same ``n``."""
    if not _dist_on():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class MomentumContrast(nn.Module):
    """MoCo core: query/key encoders, momentum update, queue, instance InfoNCE.

    Args:
        encoder_q (nn.Module): maps images [N, 3, H, W] to ``{"embedding": [N, dim], ...}``.
        dim (int): embedding dimension.
        queue_size (int): number of negative keys K.
        momentum (float): key encoder momentum m (theta_k <- m theta_k + (1 - m) theta_q).
        temperature (float): InfoNCE temperature T.
        shuffle_splits (int): chunks used for key encoding in a single process.
    """

    def __init__(self, encoder_q: nn.Module, dim: int, queue_size: int, momentum: float,
                 temperature: float, shuffle_splits: int = 2):
        super().__init__()
        self.encoder_q = encoder_q
        self.encoder_k = copy.deepcopy(encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.momentum = momentum
        self.temperature = temperature
        # InfoNCE temperature; the runner may follow a schedule (MOCO.TEMPERATURE_SCHEDULE).
        self.instance_temperature = temperature
        self.shuffle_splits = max(1, int(shuffle_splits))
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q for every parameter (buffers untouched)."""
        for p_q, p_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            p_k.mul_(self.momentum).add_(p_q.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Writes ``keys`` [n, dim] (gathered from all processes) into the queue at the pointer,
        wrapping around; the oldest keys are overwritten."""
        keys = concat_all_gather(keys)
        size = self.queue.shape[1]
        keys = keys[-size:]
        n = keys.shape[0]
        ptr = int(self.queue_ptr)
        idx = (ptr + torch.arange(n, device=keys.device)) % size
        self.queue[:, idx] = keys.T.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + n) % size

    @torch.no_grad()
    def encode_keys(self, images: torch.Tensor, encoder: nn.Module | None = None
                    ) -> Dict[str, torch.Tensor]:
        """Encodes a key batch so that BN statistics do not leak the query-key pairing.

        With several processes: MoCo's shuffle-BN (the global batch is permuted, each process
        encodes a random slice, outputs are un-permuted). In one process: the batch is permuted
        and encoded in ``shuffle_splits`` chunks (each with its own BN statistics), then restored.

        Args:
            images (Tensor): [N, 3, H, W].
            encoder (nn.Module or None): defaults to ``encoder_k``.

        Returns:
            dict[str, Tensor]: the encoder's outputs for ``images``, in input order.
        """
        encoder = encoder or self.encoder_k
        n = images.shape[0]
        if _dist_on():
            all_images = concat_all_gather(images)
            perm = torch.randperm(all_images.shape[0], device=images.device)
            dist.broadcast(perm, src=0)
            rank = dist.get_rank()
            mine = perm[rank * n:(rank + 1) * n]
            out = encoder(all_images[mine])
            restore = torch.argsort(perm)
            return {k: concat_all_gather(v)[restore][rank * n:(rank + 1) * n]
                    for k, v in out.items()}
        splits = min(self.shuffle_splits, n)
        perm = torch.randperm(n, device=images.device)
        outs = [encoder(chunk) for chunk in torch.chunk(images[perm], splits)]
        restore = torch.argsort(perm)
        return {k: torch.cat([o[k] for o in outs])[restore] for k in outs[0]}

    def instance_logits(self, q: torch.Tensor, k: torch.Tensor
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
        """MoCo InfoNCE logits and labels.

        Args:
            q (Tensor): queries [N, dim], L2-normalised.
            k (Tensor): positive keys [N, dim], L2-normalised (no gradient).

        Returns:
            (Tensor, Tensor): logits [N, 1 + K] = [q.k+, q.queue] / T, labels [N] (all 0), T
            being ``instance_temperature``.
        """
        l_pos = (q * k).sum(dim=1, keepdim=True)
        l_neg = q @ self.queue.clone().detach()
        logits = torch.cat([l_pos, l_neg], dim=1) / self.instance_temperature
        return logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device)

    def instance_step(self, im_q: torch.Tensor, im_k: torch.Tensor
                      ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Query forward, momentum update, key forward, InfoNCE loss (queue not yet updated).

        Returns:
            (dict, Tensor, Tensor): query outputs, keys [N, dim], and the InfoNCE loss.
        """
        out_q = self.encoder_q(im_q)
        with torch.no_grad():
            self.momentum_update()
            k = self.encode_keys(im_k)["embedding"]
        logits, labels = self.instance_logits(out_q["embedding"], k)
        return out_q, k, F.cross_entropy(logits, labels)

    def forward(self, batch: Dict[str, torch.Tensor], epoch: int = 0) -> Dict[str, torch.Tensor]:
        """Plain MoCo (method "moco"). Args: batch with ``img_q``, ``img_k`` [N, 3, H, W].

        Returns: ``{"loss_inst": InfoNCE}``; the keys are enqueued.
        """
        _, k, loss_inst = self.instance_step(batch["img_q"], batch["img_k"])
        self.enqueue(k)
        return {"loss_inst": loss_inst}
