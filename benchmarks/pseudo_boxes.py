#!/usr/bin/env python
# Copyright (c) det_ext authors.
"""Benchmark: pseudo-box quality on LT-Shapes val and batched vs per-image generation throughput.

Quality: the generator (``--config``, default ``configs/LT-Shapes/pseudo_tiny_albef.yaml``: the tiny
ALBEF-style model from ``tools/train_tiny_vl.py`` and the RPN of the tiny Mask R-CNN baseline, top
100 proposals) runs on every val image with its two captions; its boxes are matched to the
ground truth (precision / recall at IoU >= 0.5, mean IoU of matched pairs, per frequency group).
Proposals are computed once with the config's proposal model and saved next to the output
(``<out>.proposals.json``); both the quality and the throughput runs read them, so the throughput
compares only the generator's own work (matching, Grad-CAM, selection).

Throughput: on the same device, model, images and proposals, in one run, the batched generator (one
backward pass per batch) against PB-OVD's per-image loop (batch forward, then one backward per
caption through the whole model with ``retain_graph``), each over ``--throughput-images`` images
after one warm-up batch. This comparison always uses Grad-CAM maps (the ones that need a backward
pass); with ``PSEUDO.ALBEF.CAM_MODE attention`` the configured generator is timed as well.
``--model base`` times an ALBEF-base-sized model (ViT-B/16 at 256 px + BERT-base with 6 fusion
layers, random weights; meant for a GPU) instead of the tiny one.

    python benchmarks/pseudo_boxes.py --out results.json [--seed 0] [--device cpu] [--model tiny]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time

import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger

from det_ext.config import add_det_ext_config
from det_ext.data import LTShapesSpec, register_lt_shapes
from det_ext.data.datasets import ensure_lt_shapes_generated, read_dataset_json
from det_ext.engine import run_cli
from det_ext.pseudo.inputs import load_rgb, read_captions
from det_ext.pseudo.matching import Vocabulary
from det_ext.pseudo.pipeline import build_backend, build_generator, generate_pseudo_boxes
from det_ext.pseudo.proposals import PrecomputedProposals, build_proposal_source, dump_proposals
from det_ext.pseudo.quality import evaluate_pseudo_boxes
from det_ext.pseudo.testing import albef_base_config, random_albef_checkpoint
from det_ext.utils.io import atomic_write_json

logger = logging.getLogger("det_ext.benchmarks.pseudo_boxes")


def _time_generator(generator, records, batch_size: int, device: str) -> float:
    """Images per second of ``generator.process`` over ``records`` (after one warm-up batch)."""
    generator.process(records[:batch_size])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(0, len(records), batch_size):
        generator.process(records[s : s + batch_size])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(records) / (time.perf_counter() - t0)


def main(args: argparse.Namespace) -> dict:
    setup_logger(name="det_ext")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = (
        register_lt_shapes()
        if args.seed == 0
        else register_lt_shapes(LTShapesSpec(seed=args.seed), prefix=f"lt_shapes_seed{args.seed}")
    )
    folder = ensure_lt_shapes_generated(names["val"])
    meta = MetadataCatalog.get(names["val"])
    cfg = get_cfg()
    add_det_ext_config(cfg)
    cfg.merge_from_file(args.config)
    cfg.merge_from_list(["PSEUDO.DEVICE", args.device] + (args.opts or []))
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    prop_file = args.out + ".proposals.json"
    records = read_captions(meta.captions_file)
    captions_file = meta.captions_file
    if args.max_images:  # smoke runs: the first N val images only
        records = records[: args.max_images]
        captions_file = args.out + ".captions_subset.json"
        atomic_write_json(
            captions_file,
            [
                {"image_id": r.image_id, "file_name": r.file_name, "captions": r.captions}
                for r in records
            ],
        )
    if not os.path.isfile(prop_file):
        logger.info(
            "Computing proposals of %d val images with %s",
            len(records),
            cfg.PSEUDO.PROPOSALS.CONFIG_FILE or cfg.PSEUDO.PROPOSALS.FILE,
        )
        by_id = {r.image_id: r for r in records}
        dump_proposals(
            build_proposal_source(cfg),
            [r.image_id for r in records],
            lambda i: load_rgb(os.path.join(folder, by_id[i].file_name)),
            prop_file,
        )
    cfg.merge_from_list(["PSEUDO.PROPOSALS.FILE", prop_file])
    gt = read_dataset_json(meta.json_file)

    # ---------------------------------------------------------------- quality
    pseudo_file = args.out + ".pseudo_val.json"
    t0 = time.perf_counter()
    report = generate_pseudo_boxes(
        cfg,
        captions_file,
        meta.vocab_file,
        pseudo_file,
        image_root=folder,
        dataset_json=meta.json_file,
        progress=not args.no_progress,
    )
    gen_seconds = time.perf_counter() - t0
    with open(pseudo_file) as f:
        pseudo = json.load(f)
    quality = evaluate_pseudo_boxes(pseudo, gt)

    # ---------------------------------------------------------------- throughput
    vocabulary = Vocabulary.load(meta.vocab_file, gt["categories"])
    if args.model == "base":
        tiny = build_backend(cfg)
        vocab = tiny.tokenizer.vocab
        ckpt = os.path.join(tempfile.mkdtemp(), "albef_base_random.pth")
        random_albef_checkpoint(ckpt, albef_base_config(image_size=256), vocab)
        cfg.merge_from_list(
            [
                "PSEUDO.ALBEF.CHECKPOINT",
                ckpt,
                "PSEUDO.ALBEF.IMAGE_SIZE",
                "256",
                "PSEUDO.ALBEF.CAM_FUSION_LAYER",
                "2",
            ]
        )
    proposals = PrecomputedProposals(prop_file, cfg.PSEUDO.PROPOSALS.TOPK)
    subset = records[: args.throughput_images]
    bs = cfg.PSEUDO.BATCH_SIZE
    # Backward-pass batching is compared on Grad-CAM (the reference's map): one backward per batch
    # against PB-OVD's per-caption loop. With another CAM_MODE the configured generator is
    # timed too.
    gcfg = cfg.clone()
    gcfg.PSEUDO.ALBEF.CAM_MODE = "gradcam"
    batched = build_generator(
        gcfg, vocabulary, folder, build_backend(gcfg, per_image=False), proposals
    )
    reference = build_generator(
        gcfg, vocabulary, folder, build_backend(gcfg, per_image=True), proposals
    )
    x = _time_generator(batched, subset, bs, args.device)
    y = _time_generator(reference, subset, bs, args.device)
    configured = None
    if cfg.PSEUDO.ALBEF.CAM_MODE != "gradcam":
        gen = build_generator(
            cfg, vocabulary, folder, build_backend(cfg, per_image=False), proposals
        )
        configured = _time_generator(gen, subset, bs, args.device)
    result = {
        "precision_iou50": quality["precision_iou50"],
        "recall_iou50": quality["recall_iou50"],
        "mean_iou": quality["mean_iou"],
        "mean_best_iou": quality["mean_best_iou"],
        "num_pseudo": quality["num_pseudo"],
        "num_gt": quality["num_gt"],
        "by_group": quality["by_group"],
        "generation_report": report,
        "generation_seconds": round(gen_seconds, 2),
        "throughput": {
            "device": args.device,
            "model": args.model,
            "images": len(subset),
            "batch_size": bs,
            "threads": torch.get_num_threads(),
            "batched_img_per_s": x,
            "reference_loop_img_per_s": y,
            "speedup": x / y,
            "cam_mode_of_comparison": "gradcam",
            "configured_cam_mode": cfg.PSEUDO.ALBEF.CAM_MODE,
            "configured_img_per_s": configured if configured is not None else x,
            "configured_speedup_vs_reference": (configured if configured is not None else x) / y,
        },
        "setup": {
            "seed": args.seed,
            "config": args.config,
            "val_images": len(records),
            "overrides": list(args.opts or []),
            "checkpoint": cfg.PSEUDO.ALBEF.CHECKPOINT if args.model == "tiny" else "random",
            "proposals": {
                "file": prop_file,
                "source_config": cfg.PSEUDO.PROPOSALS.CONFIG_FILE,
                "weights": cfg.PSEUDO.PROPOSALS.WEIGHTS,
                "mode": cfg.PSEUDO.PROPOSALS.MODE,
                "topk": cfg.PSEUDO.PROPOSALS.TOPK,
            },
            "pseudo_file": pseudo_file,
        },
    }
    atomic_write_json(args.out, result, indent=2)
    logger.info("Results: %s", json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--seed", type=int, default=0, help="LT-Shapes world seed")
    p.add_argument("--config", default="configs/LT-Shapes/pseudo_tiny_albef.yaml")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--model",
        choices=("tiny", "base"),
        default="tiny",
        help="model of the throughput comparison (base: ALBEF-base size, for GPUs)",
    )
    p.add_argument("--throughput-images", type=int, default=128)
    p.add_argument(
        "--max-images", type=int, default=0, help="use only the first N val images (smoke)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    run_cli(main, p.parse_args())
