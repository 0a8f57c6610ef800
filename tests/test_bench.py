"""`unlearn bench` end to end on a tiny budget, its nightly regression check, and the nightly config's plumbing."""

import contextlib
import html
import io
import json
import pathlib
import re

import pytest
import torch

from jobs import bench, report
from pipeline import storage
from pipeline.errors import ConfigError
from pipeline.results.records import load_records
from tests.conftest import FORGET_SPEC, ROOT, SEED

CHEAP_METHODS = ("finetune", "lotus")


def run_job(main, argv) -> tuple[int, str]:
    """A job's exit status and what it printed (Ray's own logging goes elsewhere)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(argv)
    return status, out.getvalue()


@pytest.fixture(scope="module")
def tiny_bench(ray_session, digits_hard_uri, original_checkpoint, tmp_path_factory):
    """configs/demo.yaml with two cheap methods and one-epoch training; the original comes from conftest."""
    folder = tmp_path_factory.mktemp("bench")
    argv = ["--config", str(ROOT / "configs" / "demo.yaml"), "--methods", ",".join(CHEAP_METHODS),
            "--set", f"data.uri={digits_hard_uri}", "--set", f"original.checkpoint={original_checkpoint}",
            "--set", f"models={folder / 'models'}", "--set", "train.epochs=1",
            "--set", "settings.finetune.epochs=1", "--set", "settings.lotus.epochs=1",
            "--set", "ray.max_failures=0", "--set", "floor_draws=20", "--out", str(folder / "run")]
    status, printed = run_job(bench.main, argv)
    return {"argv": argv, "status": status, "printed": printed, "run": str(folder / "run"), "folder": folder}


def test_tiny_bench_ends_with_records_and_a_report(tiny_bench):
    assert tiny_bench["status"] == 0, tiny_bench["printed"]
    records = {record.method: record for record in load_records(tiny_bench["run"])}
    assert set(records) == {"original", "retrain", *CHEAP_METHODS}
    assert {(r.seed, r.forget_spec, r.dataset) for r in records.values()} == {(SEED, FORGET_SPEC, "digits-hard")}

    # The retrain row is the gold model, evaluated, with its training time as its unlearning time.
    gold_info = json.loads((tiny_bench["folder"] / "models" / f"gold-s{SEED}" / "made.json").read_text())
    retrain = records["retrain"]
    assert retrain.kind == "bench" and retrain.unlearn_seconds == pytest.approx(gold_info["train_seconds"])
    assert retrain.unlearn_seconds > 0 and gold_info["epochs_run"] == 1
    assert retrain.metrics["gold"] and retrain.metrics["avg_gap"] == pytest.approx(0.0, abs=1e-9)
    assert retrain.metrics["jsd"] == pytest.approx(0.0, abs=1e-12)
    assert retrain.checkpoint_uri == str(tiny_bench["folder"] / "models" / f"gold-s{SEED}" / "model.pt")
    # ... evaluated in the same Ray Train fit as the methods: one start-up per seed.
    assert f"== seed {SEED}: original, retrain, {', '.join(CHEAP_METHODS)} in one Ray Train fit ==" in tiny_bench["printed"]
    assert records["original"].unlearn_seconds == 0.0
    for method in CHEAP_METHODS:
        assert records[method].metrics["gold"] and records[method].metrics["avg_gap"] is not None
        assert records[method].config[method]["epochs"] == 1 and records[method].unlearn_seconds > 0
    # RF-JSD's floor belongs to the original, data and seed: the same in every row, and in the table's caption.
    floors = {(record.metrics["rf_jsd_floor_e4"], record.metrics["rf_jsd_floor_draws"]) for record in records.values()}
    assert len(floors) == 1 and floors.pop()[1] == 20 and records["lotus"].metrics["rf_jsd_floor_e4"] > 0
    assert "RF-JSD's sampling floor ×1e4:" in (pathlib.Path(tiny_bench["run"]) / "report" / "report.md").read_text()

    report_dir = pathlib.Path(tiny_bench["run"]) / "report"
    for name in ("report.md", "report.csv", "report.html", "time_vs_rf_jsd.png", "time_vs_avg_gap.png"):
        assert (report_dir / name).stat().st_size > 0, name
    printed = tiny_bench["printed"]
    assert re.search(r"^\| lotus( ⚠)? \|", printed, re.M)  # the table
    # The gold model trained for one epoch here is far below the original (trained for 15): its row is flagged
    # in the printed table, report.md and report.html, so that its low Acc_f cannot be read as forgetting.
    assert records["retrain"].metrics["acc_test"] < records["original"].metrics["acc_test"] - 0.05
    for text in (printed, (report_dir / "report.md").read_text(), html.unescape((report_dir / "report.html").read_text())):
        assert "retrain ⚠" in text and "⚠ Acc_r or Acc_test more than 0.05 below the original's: retrain (" in text
    ratio = records["lotus"].unlearn_seconds / retrain.unlearn_seconds
    assert f"LoTUS time / retrain time (digits-hard · cnn · forget {FORGET_SPEC}): {ratio:.3f}" in printed
    assert "mean over 1 seed(s), both measured in this run)" in printed  # the gold model was trained here
    assert str(report_dir / "report.html") in printed


def copy_records(run: str, previous: pathlib.Path, change=None) -> None:
    """previous/records: the run's records, each passed through `change(dict)` (a planted difference)."""
    (previous / "records").mkdir(parents=True)
    for source in storage.list_files(storage.join(run, "records"), ".json"):
        values = json.loads(pathlib.Path(source).read_text())
        if change:
            change(values)
        (previous / "records" / pathlib.Path(source).name).write_text(json.dumps(values))


def test_compare_exits_nonzero_on_a_planted_regression(tiny_bench, tmp_path):
    def finetune_was_better(values):
        if values["method"] == "finetune":  # last night's test accuracy 0.05 higher: tonight dropped by 0.05
            values["metrics"]["acc_test"] += 0.05

    copy_records(tiny_bench["run"], tmp_path / "previous", finetune_was_better)
    before = len(load_records(tiny_bench["run"]))

    # Rerunning the bench on its finished run only rebuilds the report and checks it: no new rows.
    status, printed = run_job(bench.main, tiny_bench["argv"] + ["--compare", str(tmp_path / "previous")])
    assert status == 1
    assert "1 regression(s) beyond the bands:" in printed
    assert "finetune [digits-hard · cnn · forget random:0.1] acc_test:" in printed and "(-0.05" in printed
    assert len(load_records(tiny_bench["run"])) == before
    assert "1 regression(s)" in (pathlib.Path(tiny_bench["run"]) / "report" / "regressions.txt").read_text()

    status, printed = run_job(report.main, [tiny_bench["run"], "--out", str(tmp_path / "report"),
                                            "--compare", str(tmp_path / "previous"),
                                            "--bands", str(ROOT / "configs" / "digits.yaml")])
    assert status == 1 and "acc_test" in printed and re.search(r"^\| finetune( ⚠)? \|", printed, re.M)
    assert str(tmp_path / "report" / "report.html") in printed


def test_compare_passes_an_unchanged_run(tiny_bench, tmp_path):
    copy_records(tiny_bench["run"], tmp_path / "previous")
    status, printed = run_job(bench.main, tiny_bench["argv"] + ["--compare", str(tmp_path / "previous")])
    assert status == 0 and "No regressions beyond the bands." in printed


def nightly_config_for(bucket: str, tmp_path: pathlib.Path) -> str:
    """configs/imagenet-nightly.yaml pointed at a bucket, exactly as its comments tell a user to."""
    text = (ROOT / "configs" / "imagenet-nightly.yaml").read_text()
    assert text.count("YOUR-BUCKET") >= 4
    path = tmp_path / "nightly.yaml"
    path.write_text(text.replace("YOUR-BUCKET", bucket))
    return str(path)


def test_nightly_config_runs_end_to_end_on_imagenet_shaped_shards_without_a_gold_model(ray_session, s3_bucket,
                                                                                      tmp_path):
    from pipeline.data.converters import SyntheticSpec, prepare
    from pipeline.models import ModelSpec, build_model, load_checkpoint

    # ImageNet-shaped in miniature: RGB shards and a plain backbone state dict, both on (moto) S3.
    data, weights = f"s3://{s3_bucket}/imagenet-1k", f"s3://{s3_bucket}/weights/vit_b_16.pth"
    meta = prepare("synthetic", data, seed=0, synthetic=SyntheticSpec(classes=4, size=32, train_per_class=12,
                                                                      val_per_class=4, test_per_class=4))
    tiny = build_model(ModelSpec("cnn", meta.num_classes, meta.channels, 32))
    buffer = io.BytesIO()
    torch.save(tiny.backbone.state_dict(), buffer)
    storage.write_bytes(weights, buffer.getvalue())

    run = f"s3://{s3_bucket}/unlearn/nightly/tonight"
    status, printed = run_job(bench.main, [
        "--config", nightly_config_for(s3_bucket, tmp_path), "--out", run, "--seeds", str(SEED),
        "--methods", "lotus", "--set", "model.name=cnn", "--set", "model.image_size=32",
        "--set", "ray.workers=1", "--set", "ray.gpus=false", "--set", "ray.cpus_per_worker=1",
        "--set", "ray.max_failures=0"])
    assert status == 0, printed

    records = {record.method: record for record in load_records(run)}
    assert set(records) == {"original", "lotus"}  # no gold model: no retrain row
    for record in records.values():
        assert record.forget_spec == "limited:5/45" and record.model == "cnn"
        assert record.metrics["gold"] is False and record.metrics["avg_gap"] is None and record.metrics["jsd"] is None
        for metric in ("rf_jsd", "acc_retain", "acc_test", "mia"):
            assert record.metrics[metric] is not None, metric
    # The paper's ViT settings and bf16 reach the method; the original is the weights file, untrained.
    assert {k: records["lotus"].config["lotus"][k] for k in ("lr", "epochs", "amp")} == \
        {"lr": 1e-6, "epochs": 3, "amp": "bf16"}
    assert records["lotus"].config["data"] == data
    model, spec, extra = load_checkpoint(f"s3://{s3_bucket}/unlearn/models/vit_b_16/original/model.pt")
    assert extra["weights"] == weights and spec.image_size == 32 and spec.mean == [0.485, 0.456, 0.406]
    assert torch.equal(model.backbone.state_dict()["head.weight"], tiny.backbone.state_dict()["head.weight"])
    assert storage.exists(f"{run}/report/report.html")
    assert "no retrain time to compare with (gold: false)" in printed


def test_the_time_ratio_says_which_retrain_times_come_from_reused_gold_models():
    from tests.test_results import make_record

    records = [make_record("lotus", seed, unlearn_seconds=10.0) for seed in (1, 2)]
    records += [make_record("retrain", seed, unlearn_seconds=100.0, config={"gold_reused": seed == 2})
                for seed in (1, 2)]
    line = bench.time_ratio_line(records, ["lotus"])
    assert line.startswith("LoTUS time / retrain time (digits-hard · cnn · forget random:0.1): 0.100 ")
    assert "retrain time of seed(s) 2 measured when their reused gold models were trained, not in this run" in line


@pytest.mark.parametrize("name", sorted(path.name for path in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_benchmark_config_loads_and_validates(name):
    from pipeline.config import load_yaml
    from jobs.diffusion import load_bench_config

    uri = str(ROOT / "configs" / name)
    diffusion = load_yaml(uri).get("family") == "diffusion"  # `unlearn bench` hands these to jobs/diffusion.py
    config = load_bench_config(uri) if diffusion else bench.load_config(uri)
    assert config["seeds"] and config["forget"]


def test_a_diffusion_config_is_refused_by_the_classifier_loader_and_flags_it_cannot_honour(capsys):
    from jobs.common import run_main

    with pytest.raises(ConfigError, match="family 'diffusion' is not a classifier benchmark"):
        bench.load_config(str(ROOT / "configs" / "diffusion-digits.yaml"))
    argv = ["--config", str(ROOT / "configs" / "diffusion-digits.yaml"), "--compare", "runs/earlier"]
    assert run_main(bench.main, argv) == 2
    assert "is a diffusion benchmark, which takes no --compare" in capsys.readouterr().err
