# Copyright (c) det_ext authors.
"""Config of ResNet pre-training (tools/pretrain_net.py): a yacs node of its own, not Detectron2's.

Defaults are the reference repositories' (PCL ``main_pcl.py``, MoPro ``train.py``) where they exist;
ICCL has no public code, so every ICCL default is an assumption (docs/backbones.md).
"""
from __future__ import annotations

from fvcore.common.config import CfgNode as CN

__all__ = ["add_pretrain_config", "get_pretrain_cfg"]


def add_pretrain_config(cfg: CN) -> None:
    """Adds the ``PRETRAIN`` node to ``cfg`` in place."""
    cfg.PRETRAIN = CN()
    # Method trained by tools/pretrain_net.py: "pcl", "mopro", "iccl" (or "moco": instance only).
    cfg.PRETRAIN.METHOD = "pcl"

    cfg.PRETRAIN.MODEL = CN()
    # torchvision ResNet architecture of both encoders.
    cfg.PRETRAIN.MODEL.ARCH = "resnet50"
    # Projection head: "linear" (PCL v1), "mlp" (PCL v2), "mopro" (classifier + fc1/fc2).
    cfg.PRETRAIN.MODEL.HEAD = "mlp"
    # Embedding dimension (low-dim).
    cfg.PRETRAIN.MODEL.DIM = 128
    # Classifier outputs for MoPro/ICCL; 0 = number of classes of the training data.
    cfg.PRETRAIN.MODEL.NUM_CLASSES = 0

    cfg.PRETRAIN.MOCO = CN()
    # Length of the negative-key queue (PCL pcl-r 16384, MoPro moco_queue 8192).
    cfg.PRETRAIN.MOCO.QUEUE_SIZE = 16384
    # Momentum of the key encoder update (moco-m).
    cfg.PRETRAIN.MOCO.MOMENTUM = 0.999
    # InfoNCE temperature (PCL 0.2, MoPro 0.1).
    cfg.PRETRAIN.MOCO.TEMPERATURE = 0.2
    # Schedule of the InfoNCE temperature (not in the PCL/MoPro papers): "constant" (TEMPERATURE)
    # or "cosine", Kukleva et al. (ICLR 2023) for long-tailed self-supervision: tau(t) = tau_min
    # + (tau_max - tau_min) (1 + cos(2 pi t / period)) / 2, t in epochs (fractional). Only the
    # instance InfoNCE term follows it; PCL's concentrations and MoPro's prototype logits keep
    # TEMPERATURE.
    cfg.PRETRAIN.MOCO.TEMPERATURE_SCHEDULE = "constant"
    # (tau_min, tau_max) of the cosine schedule (the paper's 0.1 and 1.0).
    cfg.PRETRAIN.MOCO.TEMPERATURE_RANGE = (0.1, 1.0)
    # Period of the cosine schedule in epochs (the paper: 400 of 2000 epochs).
    cfg.PRETRAIN.MOCO.TEMPERATURE_PERIOD = 1.0
    # Single-process replacement of shuffle-BN: keys are encoded in this many shuffled chunks,
    # so a key never shares BN statistics with exactly its query's batch (1 = off).
    cfg.PRETRAIN.MOCO.SHUFFLE_BN_SPLITS = 2

    cfg.PRETRAIN.PCL = CN()
    # k-means granularities of the E-step (number of clusters each).
    cfg.PRETRAIN.PCL.NUM_CLUSTERS = [25000, 50000, 100000]
    # Epochs of InfoNCE only before the first E-step.
    cfg.PRETRAIN.PCL.WARMUP_EPOCHS = 20
    # Negative prototypes sampled per granularity (pcl-r; capped at #clusters - #positives).
    cfg.PRETRAIN.PCL.NUM_NEG_PROTOS = 16384
    # k-means iterations and restarts (faiss niter=20, nredo=5 in the reference).
    cfg.PRETRAIN.PCL.KMEANS_ITERS = 20
    cfg.PRETRAIN.PCL.KMEANS_REDO = 5
    # alpha in phi = mean distance / log(n + alpha).
    cfg.PRETRAIN.PCL.DENSITY_ALPHA = 10.0
    # Percentiles phi is clipped to before rescaling to mean temperature.
    cfg.PRETRAIN.PCL.DENSITY_CLIP = [10.0, 90.0]
    # Cluster-balanced sampling after warm-up (not in the paper; no labels used): a cluster of the
    # coarsest granularity of the last E-step is drawn with p ~ size ** EXPONENT, then one of its
    # samples; 1.0 = the reference's instance sampling, 0.0 = cluster-balanced.
    cfg.PRETRAIN.PCL.SAMPLER_EXPONENT = 1.0

    cfg.PRETRAIN.MOPRO = CN()
    # Prototype EMA momentum (proto_m).
    cfg.PRETRAIN.MOPRO.PROTO_MOMENTUM = 0.999
    # Weights of the instance and prototype losses (w-inst, w-proto).
    cfg.PRETRAIN.MOPRO.W_INST = 1.0
    cfg.PRETRAIN.MOPRO.W_PROTO = 1.0
    # First epoch (0-based) of online noise cleaning.
    cfg.PRETRAIN.MOPRO.START_CLEAN_EPOCH = 11
    # Relabel when the max of the mixed score exceeds this (pseudo_th).
    cfg.PRETRAIN.MOPRO.PSEUDO_TH = 0.8
    # Weight of the classifier softmax in the mixed score (1 - alpha for the prototypes).
    cfg.PRETRAIN.MOPRO.ALPHA = 0.5
    # Logit adjustment tau for long-tailed labels (not in the paper; 0: off): the classifier's CE
    # and the cleaning use logits + tau * log(label frequency), so that the classifier is trained
    # as on class-balanced data (Menon et al., ICLR 2021).
    cfg.PRETRAIN.MOPRO.LOGIT_ADJUSTMENT = 0.0
    # Re-balancing of MoPro's sampler (not in the paper): a (noisy) label class is drawn with
    # p ~ n_c ** EXPONENT, then one of its samples; 1.0 = the reference's instance sampling,
    # 0.5 = square-root sampling, 0.0 = class-balanced.
    cfg.PRETRAIN.MOPRO.SAMPLER_EXPONENT = 1.0

    cfg.PRETRAIN.ICCL = CN()
    # [assumed] Interpolation: "mixup" (pixel blend) or "cutmix" (pasted box, lambda = area).
    cfg.PRETRAIN.ICCL.MIX = "mixup"
    # [assumed] lambda ~ Beta(BETA_ALPHA, BETA_ALPHA), one per sample.
    cfg.PRETRAIN.ICCL.BETA_ALPHA = 1.0
    # [assumed] Temperature of the centroid logits z.C / tau.
    cfg.PRETRAIN.ICCL.TEMPERATURE = 0.1
    # [assumed] Weight of the interpolative centroid contrastive loss.
    cfg.PRETRAIN.ICCL.WEIGHT = 1.0
    # [assumed] Epochs before the centroid loss is switched on (centroids fill up meanwhile).
    cfg.PRETRAIN.ICCL.WARMUP_EPOCHS = 1
    # [assumed] EMA momentum of the class centroids (momentum-encoder embeddings, renormalised).
    cfg.PRETRAIN.ICCL.CENTROID_MOMENTUM = 0.9
    # [assumed] Class-aware sampler: p(class) ~ n_c ** EXPONENT (0 = class-balanced).
    cfg.PRETRAIN.ICCL.CLASS_AWARE_EXPONENT = 0.0
    # [assumed] Weights of the instance InfoNCE term and of the classifier CE (mixed labels on the
    # interpolated image plus plain CE on the instance-sampled image).
    cfg.PRETRAIN.ICCL.W_INST = 1.0
    cfg.PRETRAIN.ICCL.W_CE = 1.0
    # Under PRETRAIN.SOLVER.AMP, run the interpolated images' forward pass in float32 (the other
    # passes keep the autocast dtype): with it in bfloat16, LT-Shapes ICCL backbones transferred
    # worse to detection (docs/backbones_exploration.md, tenth round). No effect without AMP.
    cfg.PRETRAIN.ICCL.MIXED_FORWARD_FLOAT32 = True

    cfg.PRETRAIN.DATA = CN()
    # "detectron2": registered datasets (LT-Shapes, LVIS, COCO ...); "json": a COCO/LVIS json
    # file + image root; "image_folder": class-per-folder images (labels = folder).
    cfg.PRETRAIN.DATA.SOURCE = "detectron2"
    # Registered training datasets (SOURCE "detectron2").
    cfg.PRETRAIN.DATA.DATASETS = ("lt_shapes_train",)
    # COCO/LVIS json and image root (SOURCE "json"), or the folder (SOURCE "image_folder").
    cfg.PRETRAIN.DATA.JSON_FILE = ""
    cfg.PRETRAIN.DATA.IMAGE_ROOT = ""
    # "crops" (one sample per annotated object, label = category) or "images" (whole images,
    # label = category of the largest object).
    cfg.PRETRAIN.DATA.MODE = "crops"
    # Side of the stored square samples (pixels); augmentations crop and resize to INPUT_SIZE.
    cfg.PRETRAIN.DATA.STORE_SIZE = 256
    cfg.PRETRAIN.DATA.INPUT_SIZE = 224
    # Context added around a box on each side, as a fraction of its size.
    cfg.PRETRAIN.DATA.CROP_CONTEXT = 0.1
    # Boxes smaller than this (pixels, either side) are skipped.
    cfg.PRETRAIN.DATA.MIN_BOX_SIZE = 2.0
    # Synthetic label noise (MoPro): fraction of the labels changed to another class.
    cfg.PRETRAIN.DATA.NOISE_RATE = 0.0
    # Class the changed labels go to (det_ext.data.noise.add_label_noise): "symmetric" (uniform over
    # the other classes) or "prior" (in proportion to the class frequencies; on a long-tailed set
    # "symmetric" leaves the rare classes' labels almost all wrong).
    cfg.PRETRAIN.DATA.NOISE_TYPE = "symmetric"

    cfg.PRETRAIN.AUG = CN()
    # RandomResizedCrop scale range.
    cfg.PRETRAIN.AUG.SCALE = (0.2, 1.0)
    # ColorJitter brightness, contrast, saturation, hue and its probability (MoCo v2).
    cfg.PRETRAIN.AUG.COLOR_JITTER = (0.4, 0.4, 0.4, 0.1)
    cfg.PRETRAIN.AUG.JITTER_PROB = 0.8
    # Probability of grayscale conversion.
    cfg.PRETRAIN.AUG.GRAYSCALE_PROB = 0.2
    # Probability of Gaussian blur (sigma 0.1-2; MoCo v2 "aug-plus").
    cfg.PRETRAIN.AUG.BLUR_PROB = 0.5
    # Rotate both views by a random multiple of 90 degrees (after the flip; not in the reference
    # recipes, which train on upright photographs).
    cfg.PRETRAIN.AUG.ROTATE_90 = False
    # Probability, per view, of replacing the pixels outside the object's instance mask by a patch
    # of another training image with its objects inpainted away (det_ext.pretrain.background), so
    # that the two views share only the object. Object crops of datasets with masks only; 0: off.
    cfg.PRETRAIN.AUG.BACKGROUND_SWAP_PROB = 0.0

    cfg.PRETRAIN.SOLVER = CN()
    cfg.PRETRAIN.SOLVER.EPOCHS = 200
    # Total batch size over all processes.
    cfg.PRETRAIN.SOLVER.BATCH_SIZE = 256
    cfg.PRETRAIN.SOLVER.BASE_LR = 0.03
    cfg.PRETRAIN.SOLVER.MOMENTUM = 0.9
    cfg.PRETRAIN.SOLVER.WEIGHT_DECAY = 1e-4
    # Cosine schedule; when False the LR is multiplied by GAMMA at each epoch of STEPS.
    cfg.PRETRAIN.SOLVER.COSINE = True
    cfg.PRETRAIN.SOLVER.STEPS = (120, 160)
    cfg.PRETRAIN.SOLVER.GAMMA = 0.1
    # Save checkpoint_{epoch:04d}.pth.tar every this many epochs (checkpoint_last every epoch).
    cfg.PRETRAIN.SOLVER.CHECKPOINT_PERIOD = 5
    # Mixed precision: the forward passes (both encoders, the losses) under torch.autocast on
    # DEVICE; weights, optimizer, queue and prototypes stay float32. "bfloat16" runs on CPUs
    # with AVX512-BF16 or AMX (1.7x faster ResNet-18 steps on a Zen 4 core) and on GPUs;
    # "float16" (GPUs) adds a gradient scaler.
    cfg.PRETRAIN.SOLVER.AMP = CN({"ENABLED": False})
    cfg.PRETRAIN.SOLVER.AMP.DTYPE = "bfloat16"
    # Data loading processes per training process.
    cfg.PRETRAIN.NUM_WORKERS = 0


def get_pretrain_cfg() -> CN:
    """A fresh pre-training config with the defaults (plus ``OUTPUT_DIR``, ``SEED``, ``DEVICE``)."""
    cfg = CN()
    # Where checkpoints and logs go.
    cfg.OUTPUT_DIR = "output/pretrain"
    # Random seed (< 0: random).
    cfg.SEED = 0
    # "cpu" or "cuda".
    cfg.DEVICE = "cpu"
    add_pretrain_config(cfg)
    return cfg
