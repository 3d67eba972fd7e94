# Copyright (c) det_ext authors.
"""Benchmark: open-vocabulary detection on the LT-Shapes open-vocabulary split.

Compares three Faster R-CNN R18-FPN detectors whose classifier is the frozen text embeddings of
the class names (tiny vision-language model's text encoder), all evaluated in the generalized
setting on LT-Shapes val (30 classes at once; novel = ``det_ext.data.open_vocab.LT_SHAPES_NOVEL``):

(a) ``base_only``: trained on base-class ground truth (novel boxes removed, novel objects are
    unlabeled background);
(b) ``pseudo_only``: trained on pseudo boxes only (vision-language Grad-CAM on the training
    captions, ``det_ext.pseudo``; proposals from the RPN of detector (a), which never saw a novel
    box);
(c) ``pseudo_then_base``: (b) fine-tuned on base-class ground truth plus the novel classes' pseudo
    boxes (600 iterations, LR 0.02, the RoI-to-embedding projection frozen; chosen on the seed-2
    world, docs/open_vocab.md). ``--finetune-data base --iters-finetune 300 --finetune-lr 0.005``
    is PB-OVD's recipe (base ground truth only, novel objects become background).

Outputs: ``--out`` JSON ``{"base_only": R, "pseudo_only": R, "pseudo_then_base": R}`` with
``R = {"novel_AP50", "base_AP50", "all_AP50"}`` (bbox, percent), ``<out>.details.json`` (all
metrics, pseudo-box report, timings, settings), ``<out>.png`` (detections of novel categories by
(c) on validation images) and a table on stdout. Every stage is resumable: rerunning the command
skips finished stages and resumes training from the last checkpoint.

Usage::

    flock /tmp/det_ext_heavy.lock python benchmarks/open_vocab_lt_shapes.py --out results.json \\
        [--seed 0] [--work-dir output/open_vocab/bench_seed0] [--tiny-vl CHECKPOINT]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from typing import Any, Dict, List, Optional

import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.logger import setup_logger

from det_ext.config import add_det_ext_config
from det_ext.data import LTShapesSpec
from det_ext.data.open_vocab import LT_SHAPES_NOVEL, register_lt_shapes_ov
from det_ext.data.open_vocab import register_base_with_pseudo_novel, register_pseudo_box_dataset
from det_ext.engine import build_config, build_trainer_class
from det_ext.engine.visualize import draw_prediction_grid
from det_ext.modeling.open_vocab import load_text_embeddings, set_vocabulary
from det_ext.modeling.open_vocab.build import build_embeddings_file
from det_ext.utils.errors import ConfigInputError
from det_ext.utils.io import atomic_open, atomic_write_json

logger = logging.getLogger("det_ext.benchmarks.open_vocab")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_CONFIG = os.path.join(REPO, "configs", "LT-Shapes", "ov_base_only_R18_FPN_tiny.yaml")
PSEUDO_CONFIG = os.path.join(REPO, "configs", "LT-Shapes", "pseudo_tiny_albef.yaml")
KEYS = ("novel_AP50", "base_AP50", "all_AP50")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--seed", type=int, default=0, help="LT-Shapes world seed")
    p.add_argument("--work-dir", default="", help="default: output/open_vocab/bench_seed<seed>")
    p.add_argument("--tiny-vl", default="",
                   help="tiny VL checkpoint (default for seed 0: output/pseudo_tiny_vl/"
                        "tiny_albef.pth if it exists); trained into the work dir when missing")
    p.add_argument("--iters-base", type=int, default=600, help="(a) iterations")
    p.add_argument("--iters-pseudo", type=int, default=600, help="(b) iterations")
    p.add_argument("--iters-finetune", type=int, default=600, help="(c) fine-tuning iterations")
    p.add_argument("--finetune-lr", type=float, default=0.02)
    p.add_argument("--finetune-data", choices=("base", "base+pseudo_novel"),
                   default="base+pseudo_novel",
                   help="(c) fine-tuning data: base ground truth only (PB-OVD), or base ground "
                        "truth plus the novel classes' pseudo boxes on the same images")
    p.add_argument("--ims-per-batch", type=int, default=8)
    p.add_argument("--num-threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-vis", type=int, default=6, help="images in the PNG")
    p.add_argument("--num-train-images", type=int, default=0,
                   help="reduced world for smoke runs (0: the default world's 2500)")
    p.add_argument("--num-val-images", type=int, default=0,
                   help="reduced world for smoke runs (0: the default world's 400)")
    p.add_argument("--pseudo-max-images", type=int, default=0,
                   help="pseudo boxes on the first N training images only (0: all)")
    p.add_argument("--tiny-vl-iters", type=int, default=0,
                   help="iterations when the tiny VL model is trained here (0: its default)")
    return p.parse_args(argv)


def world_names(args: argparse.Namespace) -> Dict[str, str]:
    """The OV split of the benchmark's LT-Shapes world (the default size unless reduced)."""
    seed = args.seed
    if args.num_train_images or args.num_val_images:
        spec = LTShapesSpec(seed=seed, num_train_images=args.num_train_images or 2500,
                            num_val_images=args.num_val_images or 400)
        prefix = f"lt_shapes_seed{seed}_n{spec.num_train_images}_{spec.num_val_images}"
        return register_lt_shapes_ov(spec, prefix=prefix)
    prefix = "lt_shapes" if seed == 0 else f"lt_shapes_seed{seed}"
    return register_lt_shapes_ov(LTShapesSpec(seed=seed), prefix=prefix)


def _frozen_copy(path: str, work: str) -> str:
    """A copy of the checkpoint in the work dir, so that a resumed run uses the same model."""
    dst = os.path.join(work, "tiny_vl_used.pth")
    if not os.path.isfile(dst):
        shutil.copyfile(path, dst + ".tmp")
        os.replace(dst + ".tmp", dst)
    return dst


def ensure_tiny_vl(args: argparse.Namespace, train_name: str, work: str) -> str:
    """The tiny VL checkpoint: given, the default one (seed 0), or trained into the work dir."""
    if args.tiny_vl:
        if not os.path.isfile(args.tiny_vl):
            raise ConfigInputError(f"--tiny-vl: checkpoint not found: {args.tiny_vl}")
        return _frozen_copy(args.tiny_vl, work)
    default = os.path.join(REPO, "output", "pseudo_tiny_vl", "tiny_albef.pth")
    if args.seed == 0 and not args.num_train_images and os.path.isfile(default):
        return _frozen_copy(default, work)
    from det_ext.pseudo.tiny_vl import TinyVLOptions, train_tiny_vl

    out = os.path.join(work, "tiny_vl")
    meta = MetadataCatalog.get(train_name)
    DatasetCatalog.get(train_name)  # generates the world
    logger.info("Training the tiny VL model for %s into %s", train_name, out)
    opts = TinyVLOptions(num_threads=args.num_threads)
    if args.tiny_vl_iters:
        opts.max_iter = args.tiny_vl_iters
        opts.warmup = min(opts.warmup, max(1, args.tiny_vl_iters // 10))
    res = train_tiny_vl(meta.captions_file, meta.image_root, meta.vocab_file, out,
                        opts, dataset_json=meta.json_file)
    return res if isinstance(res, str) and os.path.isfile(res) else os.path.join(out,
                                                                                 "tiny_albef.pth")


def build_embeddings(tiny_vl: str, names: Dict[str, str], work: str, device: str) -> Dict[str, str]:
    files = {}
    for key, dataset in (("base", names["base_train"]), ("all", names["val"])):
        path = os.path.join(work, f"text_emb_{key}.pt")
        classes = list(MetadataCatalog.get(dataset).thing_classes)
        try:
            load_text_embeddings(path, classes)
        except Exception:  # noqa: BLE001 - missing or stale: rebuild
            build_embeddings_file(path, classes, "tiny_vl", tiny_vl, device=device)
        files[key] = path
    return files


def stage_opts(args, out_dir: str, train: str, test: str, emb: Dict[str, str], tiny_vl: str,
               num_classes: int, train_emb: str, iters: int, extra: List[str]) -> List[str]:
    s1, s2 = int(iters * 0.75), int(iters * 0.92)
    steps = f"({s1}, {s2})" if 0 < s1 < s2 < iters else "()"
    return ["DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{test}',)",
            "MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes), "MODEL.DEVICE", args.device,
            "OPEN_VOCAB.TRAIN_EMBEDDINGS", train_emb, "OPEN_VOCAB.TEST_EMBEDDINGS", emb["all"],
            "OPEN_VOCAB.TEXT_ENCODER.WEIGHTS", tiny_vl, "SOLVER.IMS_PER_BATCH",
            str(args.ims_per_batch), "SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", steps,
            "SOLVER.CHECKPOINT_PERIOD", "200", "SEED", str(args.seed + 1), "OUTPUT_DIR", out_dir,
            *extra]


def run_stage(name: str, opts: List[str], timings: Dict[str, float]) -> Dict[str, Any]:
    """Trains (resuming) and evaluates one detector; returns its bbox metrics (percent)."""
    cfg = build_config(BASE_CONFIG, opts)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    with atomic_open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    metrics_file = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if os.path.isfile(final) and os.path.isfile(metrics_file):
        logger.info("Stage %s already done (%s)", name, metrics_file)
        return json.load(open(metrics_file))["bbox"]
    start = time.time()
    trainer_cls = build_trainer_class(cfg)
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=True)
    trainer.train()  # the final evaluation writes metrics.json
    timings[name] = round(time.time() - start, 1)
    return json.load(open(metrics_file))["bbox"]


def generate_pseudo(args, names: Dict[str, str], tiny_vl: str, proposal_dir: str, work: str,
                    timings: Dict[str, float]) -> str:
    """Pseudo boxes on the training images with det_ext.pseudo (resumable)."""
    from det_ext.pseudo.pipeline import generate_pseudo_boxes

    out = os.path.join(work, "pseudo_boxes_train.json")
    if os.path.isfile(out):
        return out
    meta = MetadataCatalog.get(names["train"])
    captions = meta.captions_file
    if args.pseudo_max_images:
        entries = json.load(open(captions))
        entries = sorted(entries, key=lambda e: e["image_id"])[:args.pseudo_max_images]
        captions = os.path.join(work, f"captions_train_first{args.pseudo_max_images}.json")
        atomic_write_json(captions, entries)
    cfg = get_cfg()
    add_det_ext_config(cfg)
    cfg.merge_from_file(PSEUDO_CONFIG)
    cfg.merge_from_list(["PSEUDO.ALBEF.CHECKPOINT", tiny_vl,
                         "PSEUDO.PROPOSALS.CONFIG_FILE", os.path.join(proposal_dir, "config.yaml"),
                         "PSEUDO.PROPOSALS.WEIGHTS", os.path.join(proposal_dir, "model_final.pth"),
                         "PSEUDO.DEVICE", args.device])
    cfg.freeze()
    start = time.time()
    report = generate_pseudo_boxes(cfg, captions, meta.vocab_file, out,
                                   image_root=meta.image_root, dataset_json=meta.json_file)
    timings["pseudo_boxes"] = round(time.time() - start, 1)
    logger.info("Pseudo boxes: %s", report)
    return out


def pseudo_box_stats(path: str, novel_ids: List[int]) -> Dict[str, Any]:
    data = json.load(open(path))
    anns = data["annotations"]
    return {"images": len(data["images"]), "boxes": len(anns),
            "novel_boxes": sum(a["category_id"] in set(novel_ids) for a in anns),
            "report": data.get("info", {}).get("report")}


def draw_novel(cfg_dir: str, names: Dict[str, str], emb_all: str, out_png: str, num: int) -> str:
    """Detections of novel categories by the model in ``cfg_dir`` on validation images that
    contain novel objects (score >= 0.3), as one PNG grid."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    cfg = build_config(os.path.join(cfg_dir, "config.yaml"), [])
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(os.path.join(cfg_dir, "model_final.pth"))
    emb = load_text_embeddings(emb_all)
    meta = set_vocabulary(model, emb.names, embeddings=emb)
    val_meta = MetadataCatalog.get(names["val"])
    novel = {val_meta.thing_dataset_id_to_contiguous_id[i] for i in val_meta.novel_category_ids}
    dicts = [d for d in DatasetCatalog.get(names["val"])
             if any(a["category_id"] in novel for a in d["annotations"])][:num]
    if not dicts:
        return ""
    return draw_prediction_grid(
        cfg, model, dicts, meta, out_png, score_thresh=0.3,
        keep=lambda inst: torch.tensor([int(c) in novel for c in inst.pred_classes],
                                       dtype=torch.bool))


def table(results: Dict[str, Dict[str, float]]) -> str:
    lines = [f"{'setting':<18} {'novel AP50':>10} {'base AP50':>10} {'all AP50':>10}"]
    for k, r in results.items():
        lines.append(f"{k:<18} {r['novel_AP50']:>10.2f} {r['base_AP50']:>10.2f} "
                     f"{r['all_AP50']:>10.2f}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> Dict[str, Any]:
    setup_logger(name="det_ext")
    setup_logger(name="detectron2")
    torch.set_num_threads(args.num_threads)
    t0 = time.time()
    work = os.path.abspath(args.work_dir or os.path.join("output", "open_vocab",
                                                         f"bench_seed{args.seed}"))
    os.makedirs(work, exist_ok=True)
    names = world_names(args)
    DatasetCatalog.get(names["val"])  # generates the world if needed
    timings: Dict[str, float] = {}
    tiny_vl = ensure_tiny_vl(args, names["train"], work)
    emb = build_embeddings(tiny_vl, names, work, args.device)
    n_base = len(MetadataCatalog.get(names["base_train"]).thing_classes)
    n_all = len(MetadataCatalog.get(names["val"]).thing_classes)
    dirs = {k: os.path.join(work, k) for k in ("base_only", "pseudo_only", "pseudo_then_base")}
    full: Dict[str, Dict[str, Any]] = {}
    full["base_only"] = run_stage("base_only", stage_opts(
        args, dirs["base_only"], names["base_train"], names["val"], emb, tiny_vl, n_base,
        emb["base"], args.iters_base, []), timings)
    pseudo_json = generate_pseudo(args, names, tiny_vl, dirs["base_only"], work, timings)
    pseudo_name = f"ov_bench_seed{args.seed}_pseudo_train"
    register_pseudo_box_dataset(pseudo_name, pseudo_json)
    full["pseudo_only"] = run_stage("pseudo_only", stage_opts(
        args, dirs["pseudo_only"], pseudo_name, names["val"], emb, tiny_vl, n_all, emb["all"],
        args.iters_pseudo, []), timings)
    ft_train, ft_classes, ft_emb = names["base_train"], n_base, emb["base"]
    # (c)'s folder names its settings, so that variants never reuse each other's models
    ft_kind = "keep_novel" if args.finetune_data == "base+pseudo_novel" else "base"
    dirs["pseudo_then_base"] += f"_{ft_kind}_it{args.iters_finetune}_lr{args.finetune_lr:g}"
    if args.finetune_data == "base+pseudo_novel":
        ft_train = register_base_with_pseudo_novel(
            f"ov_bench_seed{args.seed}_base_plus_pseudo_novel", names["train"], pseudo_name,
            MetadataCatalog.get(names["val"]).novel_category_ids)
        ft_classes, ft_emb = n_all, emb["all"]
    full["pseudo_then_base"] = run_stage("pseudo_then_base", stage_opts(
        args, dirs["pseudo_then_base"], ft_train, names["val"], emb, tiny_vl, ft_classes,
        ft_emb, args.iters_finetune,
        ["MODEL.WEIGHTS", os.path.join(dirs["pseudo_only"], "model_final.pth"),
         "OPEN_VOCAB.FREEZE_PROJECTION", "True", "SOLVER.BASE_LR", str(args.finetune_lr),
         "SOLVER.WARMUP_ITERS", "20"]), timings)
    results = {k: {m: round(float(v[m]), 2) for m in KEYS} for k, v in full.items()}
    out_png = os.path.splitext(args.out)[0] + ".png"
    png = draw_novel(dirs["pseudo_then_base"], names, emb["all"], out_png, args.num_vis)
    val_meta = MetadataCatalog.get(names["val"])
    details = {
        "results": results, "metrics": full, "seed": args.seed, "work_dir": work,
        "novel_categories": list(LT_SHAPES_NOVEL), "novel_category_ids":
            list(val_meta.novel_category_ids), "tiny_vl": tiny_vl,
        "pseudo_boxes": pseudo_box_stats(pseudo_json, list(val_meta.novel_category_ids)),
        "timings_s": timings, "total_s": round(time.time() - t0, 1), "png": png,
        "settings": {k: v for k, v in vars(args).items()},
    }
    atomic_write_json(args.out, results, indent=2)
    atomic_write_json(os.path.splitext(args.out)[0] + ".details.json", details, indent=2)
    sys.stdout.write(table(results) + "\n")
    return results


if __name__ == "__main__":
    from det_ext.engine import run_cli

    run_cli(main, parse_args())
