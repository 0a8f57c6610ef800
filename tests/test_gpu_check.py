"""benchmarks/gpu_check.sh end to end on CPU (--dry-run), and the arithmetic of its report and compute limit."""

import json
import os
import re
import subprocess
import sys

import pytest

from benchmarks import compute_limit, gpu_report
from tests.conftest import ROOT

PHASES = ("startup", "data", "unlearn", "epoch_reports", "eval", "total")


def test_dry_run_prints_the_table_and_the_extrapolation(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, WORK=str(tmp_path / "work"))
    # The script starts its own local Ray: it must not attach to this session's (or any) cluster, and it
    # reads local files only (conftest points AWS_ENDPOINT_URL at a moto server that may not be running).
    for name in ("RAY_ADDRESS", "AWS_ENDPOINT_URL"):
        env.pop(name, None)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    for phase in PHASES:
        assert re.search(rf"^{phase}\s+\d+\.\d\d\s", done.stdout, re.MULTILINE), (phase, done.stdout[-3000:])
    # 3 classes x limited:2/8 = 30 forget + retain images, resolved from the shards by the report
    assert re.search(r"LoTUS on ImageNet-1k limited access \(50,000 images\): \d+\.\d\d min extrapolated "
                     r"\(unlearn [\d.]+ s x 50,000 / 30 forget\+retain images of this run; 1 of 1 epochs\)",
                     done.stdout), done.stdout[-3000:]
    assert re.search(r"^goal: training >= 0\.70 of the compute limit: .*(PASS|MISS|n/a)$", done.stdout, re.MULTILINE)
    assert re.search(r"^goal: LoTUS on ImageNet-1k <= 2 min: .*(PASS|MISS)$", done.stdout, re.MULTILINE)

    (summary_file,) = (tmp_path / "work" / "runs").glob("*/gpu_check.json")
    summary = json.loads(summary_file.read_text())
    assert summary["forget_retain"] == 30 and summary["minutes"] > 0
    assert summary["limit"]["train_images_per_s"] > 0 and summary["limit"]["eval_images_per_s"] > 0
    # what a rerun reuses instead of making again
    assert (tmp_path / "work" / "original-cnn-32-3.pt").is_file()
    assert (tmp_path / "work" / "data-synthetic-imagenet-3x10-4-4-32" / "_meta.json").is_file()


def _record(**changes) -> dict:
    record = {
        "method": "lotus", "model": "vit_b_16", "dataset": "synthetic-imagenet-100", "forget_spec": "limited:5/45",
        "seed": 3407, "unlearn_seconds": 20.0,
        "phases": {"startup": 10.0, "data": 2.0, "unlearn": 20.0, "epoch_reports": 1.0, "eval": 5.0, "total": 38.0},
        "images": {"data": 0, "unlearn": 6000, "eval": 10000},
        "input_wait": {"unlearn": 4.0, "eval": 1.0},
        "config": {"lotus": {"epochs": 3, "lr": 1e-6}, "epochs_run": 3, "data": "unused"},
    }
    record.update(changes)
    return record


LIMIT = {"train_images_per_s": 500.0, "eval_images_per_s": 4000.0, "device_name": "test device"}


def test_report_arithmetic_on_a_hand_made_record():
    summary = gpu_report.summarize(_record(), forget_retain=5000, limit=LIMIT)
    rows = {row["phase"]: row for row in summary["rows"]}
    assert rows["unlearn"]["images_per_s"] == pytest.approx(300.0)  # 6000 images / 20 s
    assert rows["unlearn"]["of_limit"] == pytest.approx(0.6)  # 300 / 500
    assert rows["eval"]["images_per_s"] == pytest.approx(2000.0)
    assert rows["eval"]["of_limit"] == pytest.approx(0.5)
    assert rows["unlearn"]["input_wait"] == 4.0
    assert summary["minutes"] == pytest.approx(20.0 * 50_000 / 5000 / 60)  # 3.33 min
    assert summary["scaled_minutes"] is None
    assert [goal["status"] for goal in summary["goals"]] == ["MISS", "MISS"]

    text = gpu_report.format_report(summary, note="unit test")
    assert "3.33 min extrapolated (unlearn 20.0 s x 50,000 / 5,000 forget+retain images of this run; 3 of 3 epochs)" in text
    assert re.search(r"^unlearn\s+20\.00\s+6,000\s+300\.0\s+4\.00\s+0\.60$", text, re.MULTILINE), text
    assert "goal: training >= 0.70 of the compute limit: 0.60  MISS" in text
    assert "goal: LoTUS on ImageNet-1k <= 2 min: 3.33 min  MISS" in text

    fast = gpu_report.summarize(_record(unlearn_seconds=8.0, phases={**_record()["phases"], "unlearn": 8.0}),
                                forget_retain=5000, limit=LIMIT)
    assert fast["minutes"] == pytest.approx(8.0 * 10 / 60)  # 1.33 min
    assert [goal["status"] for goal in fast["goals"]] == ["PASS", "PASS"]  # 750 images/s = 1.5 of the limit


def test_an_early_stop_is_scaled_to_the_full_epoch_budget():
    summary = gpu_report.summarize(_record(unlearn_seconds=4.0, config={"lotus": {"epochs": 3}, "epochs_run": 1}),
                                   forget_retain=5000, limit=LIMIT)
    assert summary["minutes"] == pytest.approx(4.0 * 10 / 60)
    assert summary["scaled_minutes"] == pytest.approx(3 * 4.0 * 10 / 60)  # 2.0 min: the goal is judged on it
    assert summary["goals"][1]["status"] == "PASS"
    assert "early stop: scaled to all 3 epochs 2.00 min" in gpu_report.format_report(summary)


def test_missing_images_and_limit_print_na():
    record = _record(images={"data": None, "unlearn": None, "eval": None}, input_wait={"unlearn": None, "eval": None})
    summary = gpu_report.summarize(record, forget_retain=5000, limit=None)
    text = gpu_report.format_report(summary)
    assert re.search(r"^unlearn\s+20\.00\s+n/a\s+n/a\s+n/a\s+n/a$", text, re.MULTILINE), text
    assert "compute limit: not measured" in text
    assert "goal: training >= 0.70 of the compute limit: n/a  n/a" in text
    assert "goal: LoTUS on ImageNet-1k <= 2 min: 3.33 min  MISS" in text  # needs no image counts
    # records written before `images` existed have no such keys at all
    bare = {key: value for key, value in _record().items() if key not in ("images", "input_wait")}
    assert "n/a" in gpu_report.format_report(gpu_report.summarize(bare, forget_retain=5000, limit=LIMIT))


def test_compute_limit_measures_both_kinds_of_step_on_cpu(tmp_path):
    args = compute_limit.parser().parse_args(["--model", "cnn", "--image-size", "8", "--num-classes", "4",
                                              "--batch-size", "4", "--eval-batch-size", "8", "--steps", "2",
                                              "--warmup", "1", "--device", "cpu", "--amp", "bf16",
                                              "--channels-last"])
    result = compute_limit.measure(args)
    assert result["train_images_per_s"] == pytest.approx(4 * 2 / result["train_seconds"])
    assert result["eval_images_per_s"] == pytest.approx(8 * 2 / result["eval_seconds"])
    assert result["amp"] == "none"  # bf16 autocast is a CUDA setting, ignored on CPU as the methods ignore it
    assert "images/s" in compute_limit.describe(result)

    out = tmp_path / "limit.json"
    assert compute_limit.main(["--model", "cnn", "--image-size", "8", "--num-classes", "2", "--batch-size", "2",
                               "--steps", "1", "--warmup", "0", "--device", "cpu", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["train_images_per_s"] > 0
    assert compute_limit.main(["--model", "no-such-model", "--device", "cpu", "--steps", "1"]) == 2
