# Copyright (c) det_ext authors.
"""ICCL (Interpolative Centroid Contrastive Learning), a configurable reconstruction.

There is no public code; from the abstract: an image from the instance-balanced sampler (x_a, y_a)
and one from a class-aware sampler (x_b, y_b) are interpolated, and the interpolated image's
embedding must retrieve the centroids of both source classes. Our choices (all configurable,
documented in docs/backbones.md as assumptions):

- x~ = lam x_a + (1 - lam) x_b (mixup) or a CutMix box (lam = kept area), lam ~ Beta(a, a) per
  sample;
- centroids C [num_classes, dim]: EMA of momentum-encoder embeddings of both samplers' images,
  L2-normalised;
- L_icc = -lam log softmax(z~ . C^T / tau)[y_a] - (1 - lam) log softmax(z~ . C^T / tau)[y_b];
- total = W_INST InfoNCE(x_a) + W_CE (CE(x_a, y_a) + mixed CE(x~)) + WEIGHT L_icc (after warm-up).

With ``mix = "none"`` the model is the instance-only baseline: InfoNCE + CE on x_a, no class-aware
branch and no centroid loss.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .moco import MomentumContrast, concat_all_gather
from .mopro import update_prototypes

__all__ = ["interpolate", "centroid_contrastive_loss", "ICCL"]


def interpolate(x_a: torch.Tensor, x_b: torch.Tensor, lam: torch.Tensor, mode: str = "mixup",
                generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Interpolates two image batches.

    Args:
        x_a, x_b (Tensor): [N, 3, H, W].
        lam (Tensor): [N] weights of x_a in [0, 1].
        mode (str): ``"mixup"`` or ``"cutmix"`` (a box of area (1 - lam) H W from x_b is pasted
            into x_a; lam is then the exact kept fraction).

    Returns:
        (Tensor, Tensor): mixed images [N, 3, H, W] and the effective lam [N].
    """
    if mode == "mixup":
        w = lam.to(x_a.dtype).view(-1, *([1] * (x_a.dim() - 1)))
        return w * x_a + (1.0 - w) * x_b, lam
    if mode != "cutmix":
        raise ValueError(f"PRETRAIN.ICCL.MIX: unknown interpolation '{mode}' (mixup, cutmix)")
    n, _, h, w_ = x_a.shape
    out = x_a.clone()
    eff = torch.empty_like(lam)
    for i in range(n):
        cut = float(torch.sqrt(1.0 - lam[i]))
        ch, cw = int(round(h * cut)), int(round(w_ * cut))
        y0 = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
        x0 = int(torch.randint(0, w_ - cw + 1, (1,), generator=generator))
        out[i, :, y0:y0 + ch, x0:x0 + cw] = x_b[i, :, y0:y0 + ch, x0:x0 + cw]
        eff[i] = 1.0 - ch * cw / float(h * w_)
    return out, eff


def centroid_contrastive_loss(z: torch.Tensor, centroids: torch.Tensor, y_a: torch.Tensor,
                              y_b: torch.Tensor, lam: torch.Tensor, temperature: float
                              ) -> torch.Tensor:
    """Interpolative centroid contrastive loss (mean over the batch).

    Args:
        z (Tensor): [N, dim] L2-normalised embeddings of the interpolated images.
        centroids (Tensor): [C, dim] class centroids.
        y_a, y_b (Tensor): [N] classes of the two source images.
        lam (Tensor): [N] interpolation weights of x_a.
        temperature (float): tau.
    """
    logp = F.log_softmax(z @ centroids.T / temperature, dim=1)
    nll_a = -logp.gather(1, y_a[:, None]).squeeze(1)
    nll_b = -logp.gather(1, y_b[:, None]).squeeze(1)
    return (lam * nll_a + (1.0 - lam) * nll_b).mean()


class ICCL(MomentumContrast):
    """ICCL model (reconstruction). See the module docstring for the loss.

    Args:
        num_classes (int): C.
        mix (str): ``"mixup"``, ``"cutmix"`` or ``"none"`` (instance-only baseline).
        beta_alpha (float): Beta(a, a) parameter of lam.
        icc_temperature (float): tau of the centroid logits.
        weight (float): weight of L_icc.
        warmup_epochs (int): epochs before L_icc is used.
        centroid_momentum (float): EMA momentum of the centroids.
        w_inst, w_ce (float): weights of InfoNCE and of the classifier CE terms.
        mixed_forward_float32 (bool): run the interpolated images through ``encoder_q`` with
            autocast disabled (float32), whatever autocast the caller set up.
        **kwargs: :class:`MomentumContrast` arguments.
    """

    def __init__(self, encoder_q, num_classes: int, mix: str = "mixup", beta_alpha: float = 1.0,
                 icc_temperature: float = 0.1, weight: float = 1.0, warmup_epochs: int = 1,
                 centroid_momentum: float = 0.9, w_inst: float = 1.0, w_ce: float = 1.0,
                 mixed_forward_float32: bool = True, **kwargs):
        super().__init__(encoder_q, **kwargs)
        if mix not in ("mixup", "cutmix", "none"):
            raise ValueError(f"PRETRAIN.ICCL.MIX: unknown interpolation '{mix}'")
        self.register_buffer("centroids", torch.zeros(num_classes, self.queue.shape[0]))
        self.mix, self.icc_temperature, self.weight = mix, icc_temperature, weight
        self.warmup_epochs, self.centroid_momentum = warmup_epochs, centroid_momentum
        self.w_inst, self.w_ce = w_inst, w_ce
        self.mixed_forward_float32 = mixed_forward_float32
        self.beta = torch.distributions.Beta(torch.tensor(float(beta_alpha)),
                                             torch.tensor(float(beta_alpha)))

    @property
    def uses_class_aware_sampler(self) -> bool:
        return self.mix != "none"

    def _encode_mixed(self, mixed: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``encoder_q`` on the interpolated images [N, 3, H, W], in float32 when
        ``mixed_forward_float32`` (autocast disabled for this pass only)."""
        if not self.mixed_forward_float32:
            return self.encoder_q(mixed)
        with torch.autocast(mixed.device.type, enabled=False):
            return self.encoder_q(mixed.float())

    def forward(self, batch: Dict[str, torch.Tensor], epoch: int = 0) -> Dict[str, torch.Tensor]:
        """Args: batch with ``img_q``/``img_k`` (two views of the instance-sampled images),
        ``target`` [N]; unless ``mix == "none"`` also ``img_b`` [N, 3, H, W] and ``target_b`` [N]
        from the class-aware sampler (same N).

        Returns: losses ``loss_inst``, ``loss_cls`` and, after warm-up, ``loss_icc``.
        """
        y_a = batch["target"]
        out_q, k, loss_inst = self.instance_step(batch["img_q"], batch["img_k"])
        loss_cls = F.cross_entropy(out_q["logits"], y_a)
        feats, labels = [k], [y_a]
        losses = {"loss_inst": self.w_inst * loss_inst}
        if self.mix != "none":
            y_b = batch["target_b"]
            lam = self.beta.sample((y_a.shape[0],)).to(batch["img_q"].device)
            mixed, lam = interpolate(batch["img_q"], batch["img_b"], lam, self.mix)
            out_m = self._encode_mixed(mixed)
            logp = F.log_softmax(out_m["logits"], dim=1)
            loss_cls = loss_cls + (-(lam * logp.gather(1, y_a[:, None]).squeeze(1)
                                     + (1 - lam) * logp.gather(1, y_b[:, None]).squeeze(1))).mean()
            if epoch >= self.warmup_epochs:
                losses["loss_icc"] = self.weight * centroid_contrastive_loss(
                    out_m["embedding"], self.centroids.clone().detach(), y_a, y_b, lam,
                    self.icc_temperature)
            with torch.no_grad():
                feats.append(self.encode_keys(batch["img_b"])["embedding"])
                labels.append(y_b)
        losses["loss_cls"] = self.w_ce * loss_cls
        update_prototypes(self.centroids, concat_all_gather(torch.cat(feats)),
                          concat_all_gather(torch.cat(labels)), self.centroid_momentum)
        self.enqueue(k)
        return losses
