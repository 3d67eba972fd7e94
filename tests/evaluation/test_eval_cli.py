# Copyright (c) det_ext authors.
"""tools/evaluate.py: table, --out JSON, --plot, --coco, errors."""
import importlib.util
import json
import os

import pytest
from evalhelpers import assert_close, random_problem, run_coco_api, run_lvis_api

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("det_ext_evaluate_cli",
                                                  os.path.join(ROOT, "tools", "evaluate.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def files(tmp_path):
    gt, dets = random_problem(31, num_images=10, dets_per_image=30, crowd=True)
    gt_path, dt_path = tmp_path / "gt.json", tmp_path / "dt.json"
    gt_path.write_text(json.dumps(gt))
    dt_path.write_text(json.dumps(dets))
    return gt, dets, str(gt_path), str(dt_path)


def test_lvis_out_json_plot_and_table(cli, files, tmp_path, capsys):
    gt, dets, gt_path, dt_path = files
    out, plot = tmp_path / "m" / "metrics.json", tmp_path / "ap.png"
    assert cli.main(["--gt", gt_path, "--dt", dt_path, "--iou-type", "bbox", "--out", str(out),
                     "--plot", str(plot), "--bins", "coco_lt", "--per-category"]) == 0
    text = capsys.readouterr().out
    assert "AP50" in text and "APr" in text and "AP by training instance_count" in text
    assert "Per-category AP" in text and "cat0" in text
    metrics = json.loads(out.read_text())
    ref, _, _ = run_lvis_api(gt, dets, "bbox")
    assert_close(metrics, ref)
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"):
        assert 0 <= metrics[k] <= 1 or metrics[k] == -1
    assert [b["range"][0] for b in metrics["bins"]] == [1, 20, 400, 8000]
    assert metrics["bins"][-1]["range"][1] == "inf"
    assert len(metrics["per_category"]) == len(gt["categories"])
    assert plot.stat().st_size > 1000


def test_custom_bins_max_dets_and_coco(cli, files, tmp_path):
    gt, dets, gt_path, dt_path = files
    out = tmp_path / "m.json"
    assert cli.main(["--gt", gt_path, "--dt", dt_path, "--max-dets", "10", "--bins", "0", "50",
                     "--count-key", "instance_count", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads(out.read_text())
    assert "AR@10" in metrics and [b["range"] for b in metrics["bins"]] == [[0, 50], [50, "inf"]]
    ref, _, _ = run_lvis_api(gt, dets, "bbox", max_dets=10)
    assert_close(metrics, {k.replace("@300", "@10"): v for k, v in ref.items()})
    assert cli.main(["--gt", gt_path, "--dt", dt_path, "--coco", "--out", str(out)]) == 0
    stats, _, _ = run_coco_api(gt, dets, "bbox")
    assert json.loads(out.read_text())["stats"] == pytest.approx(list(stats), abs=1e-12)


def test_bad_input_is_one_error_line_and_status_2(cli, files, tmp_path, capsys):
    gt, dets, gt_path, _ = files
    dets[5]["score"] = None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dets))
    assert cli.main(["--gt", gt_path, "--dt", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "result #5" in err and "score" in err
    assert cli.main(["--gt", gt_path, "--dt", str(tmp_path / "none.json")]) == 2
    assert cli.main(["--gt", gt_path, "--dt", str(bad), "--bins", "nope"]) == 2
