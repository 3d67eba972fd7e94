# Copyright (c) det_ext authors.
"""Benchmark: det_ext's LVIS-style evaluation against the LVIS API (``lvis`` 0.5.3) on a synthetic
LVIS-v1-sized problem, in the same run.

The problem: 1,203 categories with LVIS v1's rare/common/frequent split (337/461/405) and training
counts, about 12 ground-truth objects per image, ``--dets-per-image`` results per image
(near-duplicates of the ground truth, mislabelled copies, background boxes; scores rounded to 3
decimals so that ties occur), federated ``neg_category_ids`` and ``not_exhaustive_category_ids``.

Each side runs in a fresh subprocess that loads the same ground-truth file and the same results
list (``json.load``), then is timed from the ground-truth file and the in-memory results to the
final metrics (LVIS API: ``LVIS`` + ``LVISResults`` + ``LVISEval.run``; det_ext: ``evaluate_lvis``).
Memory: the worker resets the kernel's peak-RSS counter (``/proc/self/clear_refs``) right before
the timed part and reads ``VmHWM`` after it, so "eval peak" is the process's peak resident memory
during evaluation and "eval extra" that peak minus the resident memory before it (the memory the
evaluation itself needs; the imports and the results list are the same input for both sides, but
det_ext's package import brings torch/detectron2). The whole-process ``ru_maxrss`` is printed too.
The LVIS API needs ``np.float``, removed in numpy 1.24: its worker sets ``np.float = float``
before running it; that shim lives only here and in the tests.

Usage::

    python benchmarks/bench_lvis_eval.py [--images 2000] [--dets-per-image 300] [--iou-type bbox]
                                         [--seed 0] [--scaling] [--skip-lvis]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

import numpy as np

METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf",
           "AR@300", "ARs@300", "ARm@300", "ARl@300"]
LVIS_V1_SPLIT = {"r": 337, "c": 461, "f": 405}


# ----------------------------------------------------------------------------- data generation
def make_problem(num_images: int, dets_per_image: int, iou_type: str, seed: int
                 ) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """Synthetic LVIS-v1-sized ground truth and results (see the module docstring)."""
    import pycocotools.mask as mask_utils

    rs = np.random.RandomState(seed)
    freq = np.array(["r"] * 337 + ["c"] * 461 + ["f"] * 405)
    rs.shuffle(freq)
    lo = {"r": 1, "c": 10, "f": 100}
    hi = {"r": 10, "c": 100, "f": 10000}
    img_count = np.array([int(np.exp(rs.uniform(np.log(lo[f]), np.log(hi[f])))) for f in freq])
    inst_count = (img_count * np.exp(rs.uniform(0, 1.5, len(freq)))).astype(int)
    cats = [{"id": i + 1, "name": f"cat_{i + 1}", "synonyms": [f"cat_{i + 1}"],
             "frequency": str(f), "image_count": int(ic), "instance_count": int(nc)}
            for i, (f, ic, nc) in enumerate(zip(freq, img_count, inst_count))]
    num_k = len(cats)
    p_cat = 0.6 * img_count / img_count.sum() + 0.4 / len(freq)  # rare categories occur too
    images, anns, dets = [], [], []
    ann_id = 1

    def poly(b: List[float]) -> List[List[float]]:
        x, y, w, h = b
        return [[x + 0.3 * w, y, x + 0.7 * w, y, x + w, y + 0.3 * h, x + w, y + 0.7 * h,
                 x + 0.7 * w, y + h, x + 0.3 * w, y + h, x, y + 0.7 * h, x, y + 0.3 * h]]

    def rand_box(width: int, height: int) -> List[float]:
        w = float(np.exp(rs.uniform(np.log(6), np.log(0.8 * width))))
        h = min(float(w * np.exp(rs.uniform(-0.7, 0.7))), 0.95 * height)
        return [float(rs.uniform(0, width - w)), float(rs.uniform(0, height - h)), w, h]

    for im in range(num_images):
        img_id = 1000 + 7 * im
        width, height = int(rs.choice([480, 512, 640])), int(rs.choice([360, 427, 480]))
        n_gt = max(1, rs.poisson(12))
        pos = np.unique(rs.choice(num_k, size=1 + rs.poisson(3), p=p_cat))
        gt_cats = rs.choice(pos, size=n_gt)
        gt_cats[: len(pos)] = pos[: n_gt]
        others = rs.choice(num_k, size=rs.randint(0, 16), p=p_cat)
        neg = sorted(set((others + 1).tolist()) - set((pos + 1).tolist()))
        nel = sorted(int(c) + 1 for c in pos if rs.rand() < 0.1)
        images.append({"id": img_id, "width": width, "height": height, "neg_category_ids": neg,
                       "not_exhaustive_category_ids": nel})
        gts = []
        for c in gt_cats:
            b = rand_box(width, height)
            ann = {"id": ann_id, "image_id": img_id, "category_id": int(c) + 1, "bbox": b}
            if iou_type == "segm":
                ann["segmentation"] = poly(b)
                rle = mask_utils.merge(mask_utils.frPyObjects(poly(b), height, width))
                ann["area"] = float(mask_utils.area(rle))
            else:
                ann["area"] = b[2] * b[3]
            anns.append(ann)
            gts.append((b, int(c) + 1))
            ann_id += 1
        cand = (pos + 1).tolist() + neg
        for k in range(dets_per_image):
            u = rs.rand()
            if u < 0.35:  # near-duplicate of a ground truth (sometimes mislabelled)
                b, c = gts[rs.randint(len(gts))]
                j = rs.normal(0, rs.choice([0.03, 0.1, 0.25]), 4)
                box = [b[0] + j[0] * b[2], b[1] + j[1] * b[3], b[2] * math.exp(j[2]),
                       b[3] * math.exp(j[3])]
                if rs.rand() < 0.2:
                    c = int(rs.choice(cand)) if rs.rand() < 0.5 else int(rs.randint(1, num_k + 1))
                score = rs.beta(3, 2)
            else:  # background box on a plausible or a random category
                box = rand_box(width, height)
                c = int(rs.choice(cand)) if rs.rand() < 0.4 else int(rs.randint(1, num_k + 1))
                score = rs.beta(1, 4)
            det = {"image_id": img_id, "category_id": c, "score": round(float(score), 3)}
            if iou_type == "segm":
                rle = mask_utils.merge(mask_utils.frPyObjects(poly(box), height, width))
                rle["counts"] = rle["counts"].decode("ascii")
                det["segmentation"] = rle  # no "bbox": mask areas, as Detectron2 evaluates segm
            else:
                det["bbox"] = [round(v, 2) for v in box]
            dets.append(det)
    return {"images": images, "annotations": anns, "categories": cats}, dets


# ----------------------------------------------------------------------------- workers
def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(side: str, gt_path: str, dt_path: str, iou_type: str, max_dets: int, out: str) -> None:
    """Runs one side and writes its metrics, time and memory to ``out``."""
    with open(dt_path) as f:
        dets = json.load(f)
    if side == "lvis":
        if "float" not in np.__dict__:
            np.float = float  # numpy >= 1.24 compatibility shim: lvis 0.5.3 uses np.float
        import logging

        logging.getLogger("lvis").setLevel(logging.ERROR)
        from lvis import LVIS, LVISEval, LVISResults
    else:
        from det_ext.evaluation import evaluate_lvis
    before = _rss_kb("VmRSS")
    reset = _reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    if side == "lvis":
        lvis_gt = LVIS(gt_path)
        ev = LVISEval(lvis_gt, LVISResults(lvis_gt, dets, max_dets=max_dets), iou_type)
        ev.run()
        metrics = {k: float(v) for k, v in ev.get_results().items()}
    else:
        res = evaluate_lvis(gt_path, dets, iou_type, max_dets=max_dets)
        metrics = {k: float(v) for k, v in res.items() if isinstance(v, float)}
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak = _rss_kb("VmHWM") if reset else -1
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(out, "w") as f:
        json.dump({"metrics": metrics, "seconds": seconds, "cpu_seconds": cpu_seconds,
                   "rss_before_kb": before,
                   "eval_peak_kb": peak, "maxrss_kb": maxrss}, f)


def run_side(side: str, gt_path: str, dt_path: str, iou_type: str, max_dets: int,
             tmp: str) -> Dict[str, Any]:
    out = os.path.join(tmp, f"{side}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--gt", gt_path, "--dt",
           dt_path, "--iou-type", iou_type, "--max-dets", str(max_dets), "--worker-out", out]
    subprocess.run(cmd, check=True)
    with open(out) as f:
        res = json.load(f)
    res["children_maxrss_kb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return res


def write_problem(args: argparse.Namespace, num_images: int, tmp: str) -> Tuple[str, str, int]:
    t0 = time.perf_counter()
    gt, dets = make_problem(num_images, args.dets_per_image, args.iou_type, args.seed)
    gt_path, dt_path = os.path.join(tmp, "gt.json"), os.path.join(tmp, "dt.json")
    with open(gt_path, "w") as f:
        json.dump(gt, f)
    with open(dt_path, "w") as f:
        json.dump(dets, f)
    print(f"synthetic problem: {num_images} images, {len(gt['categories'])} categories "
          f"(r/c/f {LVIS_V1_SPLIT['r']}/{LVIS_V1_SPLIT['c']}/{LVIS_V1_SPLIT['f']}), "
          f"{len(gt['annotations'])} GT, {len(dets)} results ({args.iou_type}), "
          f"built in {time.perf_counter() - t0:.1f} s", flush=True)
    return gt_path, dt_path, len(dets)


def _mb(kb: int) -> str:
    return f"{kb / 1024:8.0f} MB" if kb >= 0 else "     n/a"


def compare(args: argparse.Namespace) -> bool:
    with tempfile.TemporaryDirectory(prefix="bench_lvis_eval_") as tmp:
        gt_path, dt_path, _ = write_problem(args, args.images, tmp)
        ours = run_side("det_ext", gt_path, dt_path, args.iou_type, args.max_dets, tmp)
        if args.skip_lvis:
            print(f"det_ext: {ours['seconds']:.2f} s, eval peak {_mb(ours['eval_peak_kb'])}")
            return True
        ref = run_side("lvis", gt_path, dt_path, args.iou_type, args.max_dets, tmp)
    print(f"\n{'metric':<10} {'LVIS API':>14} {'det_ext':>14} {'abs diff':>10}")
    worst = 0.0
    for k in METRICS:
        a, b = ref["metrics"][k], ours["metrics"][k]
        worst = max(worst, abs(a - b))
        print(f"{k:<10} {a:>14.10f} {b:>14.10f} {abs(a - b):>10.2e}")
    rows = [("time (wall)", f"{ref['seconds']:8.2f} s", f"{ours['seconds']:8.2f} s"),
            ("time (CPU)", f"{ref['cpu_seconds']:8.2f} s", f"{ours['cpu_seconds']:8.2f} s"),
            ("eval peak RSS", _mb(ref["eval_peak_kb"]), _mb(ours["eval_peak_kb"])),
            ("RSS before eval", _mb(ref["rss_before_kb"]), _mb(ours["rss_before_kb"])),
            ("eval extra", _mb(ref["eval_peak_kb"] - ref["rss_before_kb"]),
             _mb(ours["eval_peak_kb"] - ours["rss_before_kb"])),
            ("process maxrss", _mb(ref["maxrss_kb"]), _mb(ours["maxrss_kb"]))]
    print(f"\n{'':<16} {'LVIS API':>12} {'det_ext':>12}")
    for name, a, b in rows:
        print(f"{name:<16} {a:>12} {b:>12}")
    speedup = ref["seconds"] / ours["seconds"]
    cpu_speedup = ref["cpu_seconds"] / ours["cpu_seconds"]
    extra_ratio = ((ours["eval_peak_kb"] - ours["rss_before_kb"])
                   / max(1, ref["eval_peak_kb"] - ref["rss_before_kb"]))
    peak_ratio = ours["eval_peak_kb"] / max(1, ref["eval_peak_kb"])
    print(f"\nspeed-up: {speedup:.1f}x (CPU time: {cpu_speedup:.1f}x)")
    print(f"memory ratio det_ext / LVIS API: eval extra {extra_ratio:.3f}   (eval peak RSS "
          f"{peak_ratio:.3f}, process maxrss {ours['maxrss_kb'] / max(1, ref['maxrss_kb']):.3f}: "
          "both include each side's imports)")
    ok = worst <= 1e-9
    print(f"max abs metric difference: {worst:.3e} -> "
          f"{'all metrics agree within 1e-9' if ok else 'MISMATCH (> 1e-9)'}")
    return ok


def scaling(args: argparse.Namespace) -> None:
    print(f"\nscaling of det_ext ({args.iou_type}, {args.dets_per_image} results per image):")
    rows = []
    for n in (500, 1000, 2000):
        with tempfile.TemporaryDirectory(prefix="bench_lvis_eval_") as tmp:
            gt_path, dt_path, n_dt = write_problem(args, n, tmp)
            res = run_side("det_ext", gt_path, dt_path, args.iou_type, args.max_dets, tmp)
        rows.append((n, n_dt, res["seconds"], res["cpu_seconds"]))
    for n, n_dt, s, c in rows:
        print(f"  {n:6d} images {n_dt:8d} results: {s:7.2f} s wall, {c:7.2f} s CPU "
              f"({1e3 * s / n:.3f} ms per image)")
    print(f"  time ratio 2000/500 images: {rows[-1][2] / rows[0][2]:.2f} wall, "
          f"{rows[-1][3] / rows[0][3]:.2f} CPU (linear: 4.00)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--dets-per-image", type=int, default=300)
    ap.add_argument("--iou-type", choices=["bbox", "segm"], default="bbox")
    ap.add_argument("--max-dets", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scaling", action="store_true", help="also time det_ext at 500/1000/2000")
    ap.add_argument("--skip-lvis", action="store_true", help="run det_ext only")
    ap.add_argument("--worker", choices=["lvis", "det_ext"], help=argparse.SUPPRESS)
    ap.add_argument("--gt", help=argparse.SUPPRESS)
    ap.add_argument("--dt", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.gt, args.dt, args.iou_type, args.max_dets, args.worker_out)
        return
    ok = compare(args)
    if args.scaling:
        scaling(args)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
