"""The report shows how forgetting unfolded: per-epoch curves of each method's history (loss; LoTUS's τ, Acc_f
and its acc_u target) and Acc_f per class for the original, each method and the retrained model."""

import subprocess

import pytest

from pipeline.results import plots
from pipeline.results.records import append_record
from pipeline.results.report import _mean_per_class, write_report
from tests.test_deletion import CHROMIUM, HEADLESS
from tests.test_results import assert_png, make_record

LOTUS_HISTORY = [{"epoch": e, "loss": 1.0 - 0.2 * e, "tau": 4.9 - e, "acc_f": 1.0 - 0.1 * e, "acc_u": 0.8}
                 for e in range(3)]


def unfolding_records():
    per_class = {"original": [1.0, 1.0, 1.0], "retrain": [0.7, 0.8, 0.6], "lotus": [0.8, 0.9, 0.7],
                 "finetune": [0.95, 1.0, 0.9]}
    records = []
    for seed in (0, 1):
        for method, accuracies in per_class.items():
            history = LOTUS_HISTORY if method == "lotus" else [{"epoch": 0, "loss": 0.3}] if method == "finetune" else []
            records.append(make_record(method, seed, config={method: {}, "history": history},
                                       forget_classes=[0, 3, 7], acc_forget_per_class=accuracies))
    return records


def test_the_report_shows_per_epoch_curves_and_forgetting_per_class(tmp_path):
    run = str(tmp_path / "run")
    for record in unfolding_records():
        append_record(run, record, update_parquet=False)
    written = write_report([run], str(tmp_path / "out"))
    for name in ("curves_0.png", "classes_0.png"):
        assert_png(written[name].removeprefix("file://"))
    html = (tmp_path / "out" / "report.html").read_text()
    assert "How unlearning unfolded, per epoch" in html and "Forgetting per class" in html
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "curves_0.png" in markdown and "classes_0.png" in markdown


def test_per_class_means_average_over_seeds():
    lotus = [r for r in unfolding_records() if r.method == "lotus"]
    lotus[1].metrics["acc_forget_per_class"] = [0.6, 0.7, 0.5]
    assert _mean_per_class(lotus) == {0: 0.7, 3: 0.8, 7: 0.6}


def test_plots_are_skipped_without_histories_or_per_class_figures(tmp_path):
    assert plots.epoch_curves({"ssd": []}, str(tmp_path / "c.png")) is None
    assert plots.forgetting_by_class({"ssd": {}}, str(tmp_path / "k.png")) is None
    assert_png(plots.epoch_curves({"lotus": [LOTUS_HISTORY]}, str(tmp_path / "c.png")))


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium); README shows the "
                                             "command this test runs")
def test_the_report_renders_in_a_real_headless_browser_with_its_plots(tmp_path):
    run = str(tmp_path / "run")
    for record in unfolding_records():
        append_record(run, record, update_parquet=False)
    write_report([run], str(tmp_path / "out"))
    page = (tmp_path / "out" / "report.html").as_uri()
    common = [CHROMIUM, *HEADLESS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert "How unlearning unfolded, per epoch" in dom and dom.count("<img") >= 4  # inline PNGs, no files needed
    shot = tmp_path / "report.png"
    subprocess.run([*common, "--window-size=1300,3000", f"--screenshot={shot}", page], capture_output=True,
                   timeout=120, check=True)
    assert_png(str(shot))
