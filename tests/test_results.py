"""The result stage: records (local and S3), aggregation, tables, CSV, plots, HTML report, regression check."""

import io
import json
import math
import re

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.errors import ConfigError, DataError
from pipeline.results.aggregate import summarize, summary_frame
from pipeline.results.records import (RecordExistsError, ResultRecord, append_record, load_records, new_run_id,
                                      rebuild_parquet, records_frame)
from pipeline.results.regression import compare, format_regressions

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_record(method="lotus", seed=0, kind="unlearn", run_id=None, unlearn_seconds=60.0, config=None,
                dataset="digits-hard", **metrics):
    base = {"acc_forget": 0.70, "acc_retain": 0.99, "acc_test": 0.68, "acc_unseen": 0.69, "mia": 0.40,
            "jsd": 0.0005, "jsd_e4": 5.0, "rf_jsd": 0.0010, "rf_jsd_e4": 10.0, "avg_gap": 0.05, "gold": True}
    base.update(metrics)
    return ResultRecord(
        run_id=run_id or f"{kind}-{method}-s{seed}", kind=kind, method=method, dataset=dataset, model="cnn",
        seed=seed, forget_spec="random:0.1", config=config or {"method": method, method: {"lr": 1e-4}},
        metrics=base, phases={"startup": 2.0, "data": 5.0, "unlearn": unlearn_seconds, "eval": 3.0,
                              "total": 10.0 + unlearn_seconds},
        unlearn_seconds=unlearn_seconds, workers=2, gpus=0,
        versions={"python": "3.11", "torch": "2.14.1", "ray": "2.60.0", "package": "0.1.0"},
        checkpoint_uri=f"/ckpt/{method}-{seed}.pt", checkpoint_sha256="ab" * 32, created="2025-01-01T00:00:00+00:00")


def benchmark_records():
    """original, retrain, lotus (3 seeds each) and finetune (1 seed) with hand-picked numbers."""
    records = []
    for seed, (acc_test, rf) in enumerate([(0.90, 4.0), (0.92, 6.0), (0.94, 8.0)]):
        records.append(make_record("lotus", seed, acc_test=acc_test, rf_jsd_e4=rf, avg_gap=0.1 + 0.02 * seed))
        records.append(make_record("retrain", seed, unlearn_seconds=600.0, acc_test=0.95, rf_jsd_e4=1.0, avg_gap=0.0))
        records.append(make_record("original", seed, unlearn_seconds=0.0, acc_test=0.96, rf_jsd_e4=50.0,
                                   avg_gap=0.3))
    records.append(make_record("finetune", 0, unlearn_seconds=120.0, acc_test=0.93, rf_jsd_e4=20.0, avg_gap=0.2,
                               jsd_e4=None, jsd=None))
    return records


# --- records -----------------------------------------------------------------------------------------------

def test_record_round_trip_local_with_parquet_index(tmp_path):
    run = str(tmp_path / "run")
    first, second = make_record("lotus", 0), make_record("retrain", 1, config={"nested": {"a": [1, 2]}})
    assert append_record(run, first).endswith("records/unlearn-lotus-s0.json")
    append_record(run, second)

    assert load_records(run) == [first, second]
    table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(run, "records.parquet")))).to_pandas()
    assert len(table) == 2
    assert {"metrics.acc_forget", "metrics.rf_jsd_e4", "phases.unlearn", "versions.ray", "config"} <= set(table.columns)
    row = table.set_index("run_id").loc["unlearn-retrain-s1"]
    assert json.loads(row["config"]) == {"nested": {"a": [1, 2]}}
    assert row["phases.unlearn"] == 60.0 and row["metrics.gold"]


def test_record_fills_missing_standard_keys_and_rejects_bad_fields():
    record = ResultRecord(run_id="r1", kind="eval", method="ssd", dataset="d", model="m", seed=0,
                          forget_spec="class:3", metrics={"acc_test": 0.5})
    assert record.metrics["rf_jsd"] is None and record.metrics["gold"] is False
    assert set(record.phases) == {"startup", "data", "unlearn", "epoch_reports", "eval", "total"}
    with pytest.raises(DataError, match="kind"):
        ResultRecord(run_id="r1", kind="training", method="x", dataset="d", model="m", seed=0, forget_spec="f")
    with pytest.raises(DataError, match="run_id"):
        ResultRecord(run_id="../escape", kind="eval", method="x", dataset="d", model="m", seed=0, forget_spec="f")


def test_append_never_overwrites_an_existing_run_id(tmp_path):
    run = str(tmp_path)
    append_record(run, make_record("lotus", 0, acc_test=0.5))
    with pytest.raises(RecordExistsError, match="unlearn-lotus-s0"):
        append_record(run, make_record("lotus", 0, acc_test=0.9))
    (stored,) = load_records(run)
    assert stored.metrics["acc_test"] == 0.5
    assert [p.name for p in (tmp_path / "records").iterdir()] == ["unlearn-lotus-s0.json"]  # no temp files left


def test_concurrent_appends_of_one_run_id_store_exactly_one(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    def attempt(worker):
        try:
            append_record(str(tmp_path), make_record("lotus", 0, acc_test=worker / 10), update_parquet=False)
            return worker
        except RecordExistsError:
            return None

    with ThreadPoolExecutor(8) as pool:
        winners = [w for w in pool.map(attempt, range(8)) if w is not None]
    assert len(winners) == 1
    assert load_records(str(tmp_path))[0].metrics["acc_test"] == winners[0] / 10
    assert not (tmp_path / "records.parquet").exists()  # update_parquet=False: the driver rebuilds once
    rebuild_parquet(str(tmp_path))
    assert pq.read_table(tmp_path / "records.parquet").num_rows == 1


def test_new_run_ids_are_unique_and_valid():
    ids = {new_run_id("sweep-trial", "lotus", 3) for _ in range(50)}
    assert len(ids) == 50 and all(i.startswith("sweep-trial-lotus-s3-") for i in ids)
    ResultRecord(run_id=ids.pop(), kind="sweep-trial", method="lotus", dataset="d", model="m", seed=3, forget_spec="f")


def test_load_records_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="no result records under"):
        load_records(str(tmp_path))
    append_record(str(tmp_path / "a"), make_record("lotus", 0))
    with pytest.raises(DataError, match="appears in both"):
        load_records(str(tmp_path / "a"), str(tmp_path / "a"))
    (tmp_path / "b" / "records").mkdir(parents=True)
    (tmp_path / "b" / "records" / "x.json").write_text('{"run_id": "x"}')
    with pytest.raises(DataError, match="lacks"):
        load_records(str(tmp_path / "b"))


def test_records_frame_flattens_nested_dicts():
    frame = records_frame([make_record("lotus", 0), make_record("retrain", 1, acc_test=None)])
    assert frame.loc[0, "metrics.rf_jsd_e4"] == 10.0 and math.isnan(frame.loc[1, "metrics.acc_test"])
    assert frame["phases.total"].tolist() == [70.0, 70.0]
    assert list(records_frame([]).columns)[:2] == ["run_id", "kind"]


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_endpoint(s3_server, monkeypatch):
    for name, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    return s3_server


def test_record_round_trip_through_s3(s3_endpoint):
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="results")
    run = "s3://results/nightly/2025-01-01"
    records = [make_record("lotus", 0), make_record("retrain", 0)]
    for record in records:
        append_record(run, record)
    assert load_records(run) == records
    with pytest.raises(RecordExistsError):
        append_record(run, make_record("lotus", 0))
    table = pq.read_table(io.BytesIO(storage.read_bytes(f"{run}/records.parquet")))
    assert sorted(table.column("run_id").to_pylist()) == ["unlearn-lotus-s0", "unlearn-retrain-s0"]

    from pipeline.results.report import write_report

    written = write_report([run])  # default out: <run>/report, plots uploaded from a temp dir
    assert written["report.html"] == f"{run}/report/report.html"
    assert storage.read_bytes(written["phases.png"]).startswith(PNG_SIGNATURE)
    assert "data:image/png;base64," in storage.read_text(written["report.html"])


def test_missing_bucket_is_a_clear_data_error(s3_endpoint):
    with pytest.raises(DataError, match="bucket .*does not exist"):
        load_records("s3://no-such-bucket/run")
    with pytest.raises(DataError, match="bucket .*does not exist"):
        append_record("s3://no-such-bucket/run", make_record())


# --- aggregation, tables, CSV ------------------------------------------------------------------------------

def by_method(summaries):
    return {s.method: s for s in summaries}


def test_aggregate_mean_and_sample_std_over_seeds():
    summaries = summarize(benchmark_records(), method_order=["lotus"])
    assert [s.method for s in summaries] == ["original", "retrain", "lotus", "finetune"]
    lotus = by_method(summaries)["lotus"]
    assert lotus.seeds == (0, 1, 2)
    assert lotus.mean("acc_test") == pytest.approx(0.92)
    assert lotus.std("acc_test") == pytest.approx(0.02)  # ddof=1: sqrt((0.02² + 0 + 0.02²) / 2)
    assert lotus.mean("rf_jsd_e4") == pytest.approx(6.0) and lotus.std("rf_jsd_e4") == pytest.approx(2.0)
    assert lotus.mean("unlearn_minutes") == pytest.approx(1.0)
    assert lotus.time_ratio == pytest.approx(0.1)  # 60 s / 600 s
    assert lotus.phases["data"] == pytest.approx(5.0)
    finetune = by_method(summaries)["finetune"]
    assert finetune.std("acc_test") is None and finetune.stats["acc_test"].n == 1  # one seed: no std
    assert finetune.mean("jsd_e4") is None
    assert by_method(summaries)["retrain"].time_ratio == pytest.approx(1.0)


def test_aggregate_averages_reruns_within_a_seed_and_handles_no_retrain():
    records = [make_record("lotus", 0, run_id="a", acc_test=0.80), make_record("lotus", 0, run_id="b", acc_test=0.90),
               make_record("lotus", 1, run_id="c", acc_test=0.95), make_record("lotus", 0, kind="sweep-trial",
                                                                              run_id="t", acc_test=0.1)]
    (lotus,) = summarize(records)
    assert lotus.mean("acc_test") == pytest.approx((0.85 + 0.95) / 2)  # the sweep trial is left out
    assert lotus.time_ratio is None


def test_aggregate_separates_datasets():
    records = [make_record("lotus", 0), make_record("lotus", 0, dataset="imagenet", run_id="other")]
    assert [s.dataset for s in summarize(records)] == ["digits-hard", "imagenet"]


def test_markdown_table_cells_for_a_hand_made_case():
    from pipeline.results.tables import markdown_table

    text = markdown_table(summarize(benchmark_records()))
    lines = text.splitlines()
    assert lines[0] == "### digits-hard · cnn · forget random:0.1"
    assert lines[2] == ("| Method | Acc_f | Acc_r | Acc_test | MIA | Avg Gap ↓ | JSD×1e4 ↓ | RF-JSD×1e4 ↓ "
                        "| Time (min) | Time / retrain |")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ") and "---" not in line}
    assert rows["lotus"] == ("| lotus | 0.700 ± 0.000 | 0.990 ± 0.000 | 0.920 ± 0.020 | 0.400 ± 0.000 "
                             "| **0.120 ± 0.020** | 5.00 ± 0.00 | **6.00 ± 2.00** | 1.00 ± 0.00 | 0.10 |")
    assert rows["finetune"] == ("| finetune | 0.700 | 0.990 | 0.930 | 0.400 | 0.200 | — | 20.00 | 2.00 | 0.20 |")
    assert rows["retrain"].endswith("| 10.00 ± 0.00 | 1.00 |")
    assert "seeds per method: original 3, retrain 3, finetune 1, lotus 3" in text
    assert "sampling floor" not in text  # records without a floor: no floor claimed


def collapsed_records():
    """original (Acc_r 1.00, Acc_test 0.76), a method that collapsed, one just inside the 0.05 band, one just past,
    and one that kept everything."""
    records = []
    for seed in (0, 1):
        records += [make_record("original", seed, acc_retain=1.0, acc_test=0.76, acc_forget=1.0, avg_gap=0.3),
                    make_record("scrub", seed, acc_retain=0.12, acc_test=0.11, acc_forget=0.10, avg_gap=0.01,
                                rf_jsd_e4=1.0),
                    make_record("lotus", seed, acc_retain=0.96, acc_test=0.715, avg_gap=0.05, rf_jsd_e4=4.0),
                    make_record("salun", seed, acc_retain=0.999, acc_test=0.70, avg_gap=0.04, rf_jsd_e4=3.0),
                    make_record("npo", seed, acc_retain=1.0, acc_test=0.77, avg_gap=0.2, rf_jsd_e4=8.0)]
    return records


def test_a_row_that_lost_retain_or_test_accuracy_is_flagged_and_never_bold(tmp_path):
    from pipeline.results.report import write_report
    from pipeline.results.tables import accuracy_losses, markdown_table

    summaries = summarize(collapsed_records())
    losses = accuracy_losses(summaries)
    assert set(losses) == {"scrub", "salun"}  # lotus: Acc_test -0.045, Acc_r -0.04, inside the band
    assert losses["scrub"] == {"acc_retain": pytest.approx(-0.88), "acc_test": pytest.approx(-0.65)}
    assert losses["salun"] == {"acc_test": pytest.approx(-0.06)}
    text = markdown_table(summaries)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["scrub ⚠"].startswith("| scrub ⚠ | 0.100 ± 0.000 | 0.120 ± 0.000 ⚠ | 0.110 ± 0.000 ⚠ |")
    assert "**" not in rows["scrub ⚠"]  # the lowest Avg Gap and RF-JSD, but collapsed: not the best
    assert "| salun ⚠ | 0.700 ± 0.000 | 0.999 ± 0.000 | 0.700 ± 0.000 ⚠ |" in rows["salun ⚠"]
    assert "**0.050 ± 0.000**" in rows["lotus"] and "⚠" not in rows["lotus"]
    assert "⚠ Acc_r or Acc_test more than 0.05 below the original's: salun (Acc_test -0.060); " \
           "scrub (Acc_r -0.880, Acc_test -0.650)." in text

    run = str(tmp_path / "run")
    for record in collapsed_records():
        append_record(run, record)
    written = write_report([run], str(tmp_path / "out"))
    markdown = open(written["report.md"], encoding="utf-8").read()
    page = open(written["report.html"], encoding="utf-8").read()
    assert "| scrub ⚠ |" in markdown and "scrub (Acc_r -0.880, Acc_test -0.650)" in markdown
    assert "<td>scrub ⚠</td>" in page and "0.110 ± 0.000 ⚠" in page and "scrub (Acc_r -0.880" in page
    assert "<td>lotus</td>" in page


def test_no_flag_without_an_original_row_to_compare_with():
    from pipeline.results.tables import accuracy_losses, markdown_table

    summaries = summarize([r for r in collapsed_records() if r.method != "original"])
    assert accuracy_losses(summaries) == {} and "⚠" not in markdown_table(summaries)


def test_jit_is_marked_under_every_table_that_holds_it():
    from pipeline.results.tables import markdown_table

    text = markdown_table(summarize([make_record("original", 0), make_record("jit", 0)]))
    assert "jit: does not forget memorised samples on digits-hard (property of the published method)" in text
    assert "does not forget" not in markdown_table(summarize(benchmark_records()))


def test_the_caption_names_rf_jsd_floor_when_the_records_carry_it():
    from pipeline.results.tables import markdown_table

    records = [make_record(method, seed, rf_jsd_floor_e4=300.0 + seed) for method in ("original", "lotus")
               for seed in (0, 1, 2)]
    assert "RF-JSD's sampling floor ×1e4: 301.00 (the original on draws from D_test" in \
        markdown_table(summarize(records))


def test_csv_holds_the_same_numbers_as_mean_and_std_columns():
    from pipeline.results.tables import csv_text

    frame = pd.read_csv(io.StringIO(csv_text(summarize(benchmark_records()))))
    lotus = frame.set_index("method").loc["lotus"]
    assert lotus["acc_test_mean"] == pytest.approx(0.92) and lotus["acc_test_std"] == pytest.approx(0.02)
    assert lotus["rf_jsd_e4_mean"] == pytest.approx(6.0) and lotus["time_ratio"] == pytest.approx(0.1)
    assert lotus["n_seeds"] == 3
    assert math.isnan(frame.set_index("method").loc["finetune", "acc_test_std"])
    assert list(summary_frame([]).columns) == list(frame.columns)


# --- plots and report --------------------------------------------------------------------------------------

def assert_png(path):
    data = open(path, "rb").read()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 2000


def sweep_frame(n_alpha=4, n_lr=3):
    rows = []
    for i in range(n_alpha):
        for j in range(n_lr):
            rows.append({"alpha": 2.0 ** i, "lr": 10.0 ** -(j + 3), "rf_jsd": 0.001 * (i + j + 1),
                         "feasible": not (i == 0 and j == 0)})
    return pd.DataFrame(rows)


def test_plots_write_png_files(tmp_path):
    from pipeline.results import plots

    summaries = summarize(benchmark_records())
    assert_png(plots.time_vs_rf_jsd(summaries, str(tmp_path / "rf.png")))
    assert_png(plots.time_vs_avg_gap(summaries, str(tmp_path / "gap.png")))
    assert_png(plots.phase_bars(summaries, str(tmp_path / "phases.png")))
    assert_png(plots.heatmap(sweep_frame(), str(tmp_path / "grid.png"), x="alpha", y="lr", value="rf_jsd",
                             infeasible_column="feasible"))
    no_gold = summarize([make_record("lotus", 0, avg_gap=None)])
    assert plots.time_vs_avg_gap(no_gold, str(tmp_path / "none.png")) is None
    assert not (tmp_path / "none.png").exists()


def test_heatmap_cells_bins_and_infeasible_marks(tmp_path):
    from pipeline.results import plots

    grid = plots._reduce_cells((2, 2), [0, 0, 1], [0, 0, 1], [True, True, False], [3.0, 1.0, 7.0], "min")
    assert grid[0, 0] == 1.0 and math.isnan(grid[1, 1])  # best feasible trial; infeasible-only cell empty
    indices, labels, note = plots._axis_cells(pd.Series([10.0 ** -k for k in range(1, 31)]), max_cells=6)
    assert len(labels) == 6 and note == " (log bins)" and indices.min() == 0 and indices.max() == 5
    many = sweep_frame(n_alpha=20, n_lr=15)  # more distinct values than cells: binned
    assert_png(plots.heatmap(many, str(tmp_path / "binned.png")))
    with pytest.raises(DataError, match="columns"):
        plots.heatmap(many, str(tmp_path / "bad.png"), value="avg_gap")


def test_write_report_makes_self_contained_html_and_all_files(tmp_path):
    from pipeline.results.report import write_report

    run = str(tmp_path / "run")
    for record in benchmark_records():
        append_record(run, record)
    for i, (alpha, lr) in enumerate([(a, l) for a in (2.0, 8.0, 32.0) for l in (1e-4, 1e-3)]):
        append_record(run, make_record("lotus", 0, kind="sweep-trial", run_id=f"trial-{i}", rf_jsd_e4=float(i),
                                       config={"lotus": {"alpha": alpha, "lr": lr, "epochs": 3}, "seed": 0},
                                       feasible=i != 3))
    written = write_report([run], str(tmp_path / "out"))
    assert set(written) == {"report.md", "report.csv", "report.html", "time_vs_rf_jsd.png", "time_vs_avg_gap.png",
                            "phases.png", "sweep_lotus.png"}
    for name in ("time_vs_rf_jsd.png", "sweep_lotus.png"):
        assert_png(written[name])
    page = open(written["report.html"], encoding="utf-8").read()
    assert page.count('src="data:image/png;base64,') == 4
    assert not re.search(r"https?://", page)  # nothing fetched from the network
    assert "<td>lotus</td>" in page and "0.920 ± 0.020" in page and run in page
    markdown = open(written["report.md"], encoding="utf-8").read()
    assert "| lotus | 6 | 5 | 0.00 | trial-0 |" in markdown and "![Runtime per phase](phases.png)" in markdown


def test_write_report_with_previous_run_writes_regressions(tmp_path):
    from pipeline.results.report import write_report

    previous, current = str(tmp_path / "prev"), str(tmp_path / "cur")
    for record in benchmark_records():
        append_record(previous, record)
        append_record(current, record if record.method != "lotus" else
                      make_record("lotus", record.seed, acc_test=0.5, rf_jsd_e4=record.metrics["rf_jsd_e4"]))
    written = write_report([current], str(tmp_path / "out"), previous_uris=[previous])
    text = open(written["regressions.txt"], encoding="utf-8").read()
    assert "lotus" in text and "acc_test" in text and "band max_drop 0.02" in text


# --- regression check --------------------------------------------------------------------------------------

def shifted(records, method, **changes):
    """Copies of `records` with `method`'s metrics (or unlearn_seconds) changed by the given amounts."""
    out = []
    for record in records:
        metrics, seconds = dict(record.metrics), record.unlearn_seconds
        if record.method == method:
            for key, delta in changes.items():
                if key == "unlearn_seconds":
                    seconds += delta
                else:
                    metrics[key] += delta
        out.append(ResultRecord(**{**record.to_dict(), "metrics": metrics, "unlearn_seconds": seconds}))
    return out


BANDS = {"acc_test": {"max_drop": 0.02}, "rf_jsd_e4": {"max_rise": 5.0},
         "unlearn_seconds": {"max_rise_ratio": 0.25}, "mia": {"max_change": 0.05}}


def test_planted_regression_is_flagged_with_method_metric_and_size():
    previous = benchmark_records()
    current = shifted(previous, "lotus", acc_test=-0.05, unlearn_seconds=30.0)
    found = [r for r in compare(current, previous, BANDS) if r.is_failure]
    assert {(r.method, r.metric) for r in found} == {("lotus", "acc_test"), ("lotus", "unlearn_seconds")}
    drop = next(r for r in found if r.metric == "acc_test")
    assert drop.previous == pytest.approx(0.92) and drop.current == pytest.approx(0.87)
    assert drop.change == pytest.approx(-0.05) and drop.band == "max_drop 0.02"
    slower = next(r for r in found if r.metric == "unlearn_seconds")
    assert slower.relative_change == pytest.approx(0.5) and slower.band == "max_rise_ratio 0.25"
    text = format_regressions(found)
    assert "2 regression(s)" in text
    assert "lotus [digits-hard · cnn · forget random:0.1] acc_test: 0.92 → 0.87 (-0.05, -5.4%); band max_drop 0.02" \
        in text


def test_unchanged_run_and_improvements_pass():
    previous = benchmark_records()
    assert compare(previous, previous, BANDS) == []
    assert format_regressions([]) == "No regressions beyond the bands."
    better = shifted(previous, "lotus", acc_test=0.05, rf_jsd_e4=-4.0, unlearn_seconds=-30.0)
    assert compare(better, previous, BANDS) == []
    within = shifted(previous, "lotus", acc_test=-0.019, mia=0.049)
    assert compare(within, previous, BANDS) == []
    assert [r.metric for r in compare(shifted(previous, "lotus", mia=-0.06), previous, BANDS)] == ["mia"]


def test_missing_and_new_methods_are_reported():
    previous = benchmark_records()
    current = [r for r in previous if r.method != "finetune"] + [make_record("scrub", 0)]
    found = compare(current, previous, BANDS)
    assert [(r.kind, r.method, r.is_failure) for r in found] == [("missing-method", "finetune", True),
                                                                 ("new-method", "scrub", False)]
    text = format_regressions(found)
    assert "finetune [digits-hard · cnn · forget random:0.1]: missing from the current run" in text
    assert "+ scrub" in text
    gone = [ResultRecord(**{**r.to_dict(), "metrics": {**r.metrics, "rf_jsd_e4": None, "rf_jsd": None}})
            if r.method == "lotus" else r for r in previous]
    assert [(r.kind, r.metric) for r in compare(gone, previous, BANDS)] == [("missing-metric", "rf_jsd_e4")]


def test_bands_are_validated():
    records = benchmark_records()
    with pytest.raises(ConfigError, match="flag improvements"):
        compare(records, records, {"acc_test": {"max_rise": 0.1}})
    with pytest.raises(ConfigError, match="unknown band rule"):
        compare(records, records, {"acc_test": {"max_fall": 0.1}})
    with pytest.raises(ConfigError, match="unknown metric"):
        compare(records, records, {"accuracy": {"max_drop": 0.1}})
    with pytest.raises(ConfigError, match=">= 0"):
        compare(records, records, {"avg_gap": {"max_rise": -1}})


# --- where the time went -----------------------------------------------------------------------------------

def timed_record(method, seed, unlearn, wait, images_unlearn, startup=10.0, data=20.0, eval_seconds=10.0):
    """A record with hand-picked phases, images per phase and input-wait seconds."""
    import dataclasses

    phases = {"startup": startup, "data": data, "unlearn": unlearn, "epoch_reports": 0.0, "eval": eval_seconds}
    return dataclasses.replace(
        make_record(method, seed, unlearn_seconds=unlearn),
        phases={**phases, "total": sum(phases.values())},
        images={"data": 6000, "unlearn": images_unlearn, "eval": 5000},
        input_wait={"unlearn": wait, "eval": 1.0})


def time_records():
    return [timed_record("lotus", 0, unlearn=60.0, wait=40.0, images_unlearn=12000),
            timed_record("lotus", 1, unlearn=40.0, wait=20.0, images_unlearn=12000),
            timed_record("finetune", 0, unlearn=100.0, wait=10.0, images_unlearn=45000),
            timed_record("original", 0, unlearn=0.0, wait=0.0, images_unlearn=0),
            make_record("neggrad", 0, unlearn_seconds=60.0)]  # an older record: no images, no input wait


def test_time_breakdown_shares_rates_and_bound_are_means_over_seeds():
    summaries = by_method(summarize(time_records()))
    lotus = summaries["lotus"]
    # Pooled over the two seeds: mean unlearn 50 s of a mean run time of 90 s (100 s and 80 s).
    assert lotus.phase_shares["unlearn"] == pytest.approx(50 / 90)
    assert lotus.phase_shares["startup"] == pytest.approx(10 / 90) and lotus.phase_shares["epoch_reports"] == 0.0
    assert sum(lotus.phase_shares.values()) == pytest.approx(1.0)
    assert lotus.throughput == pytest.approx({"data": 300.0, "unlearn": 240.0, "eval": 500.0})  # 12000 / 50 s
    assert lotus.images["unlearn"] == 12000 and lotus.input_wait["unlearn"] == pytest.approx(30.0)
    assert lotus.wait_shares["unlearn"] == pytest.approx(0.6) and lotus.bound == "input-bound"
    finetune = summaries["finetune"]
    assert finetune.throughput["unlearn"] == pytest.approx(450.0)
    assert finetune.wait_shares["unlearn"] == pytest.approx(0.1) and finetune.bound == "compute-bound"
    # No unlearning: no rate, no wait share (0 images in 0 s is not a stall).
    original = summaries["original"]
    assert original.throughput["unlearn"] is None and original.wait_shares["unlearn"] is None
    assert original.bound is None and original.throughput["eval"] == pytest.approx(500.0)


def test_time_breakdown_is_none_safe_for_older_records():
    neggrad = by_method(summarize(time_records()))["neggrad"]
    assert neggrad.images == {"data": None, "unlearn": None, "eval": None}
    assert neggrad.throughput == {"data": None, "unlearn": None, "eval": None}
    assert neggrad.wait_shares == {"unlearn": None, "eval": None} and neggrad.bound is None
    # Its phases still split its run time; the phase it lacks (epoch_reports) has no share.
    assert neggrad.phase_shares["unlearn"] == pytest.approx(60 / 70) and neggrad.phase_shares["epoch_reports"] is None
    # Images without input-wait seconds: a rate, no verdict.
    import dataclasses

    partial = dataclasses.replace(make_record("scrub", 0), images={"unlearn": 600}, input_wait={})
    (scrub,) = summarize([partial])
    assert scrub.throughput["unlearn"] == pytest.approx(10.0) and scrub.bound is None


def test_where_the_time_went_table_and_verdicts():
    from pipeline.results.tables import markdown_time_tables

    text = markdown_time_tables(summarize(time_records(), method_order=["finetune", "lotus"]))
    lines = text.splitlines()
    assert lines[0] == "### digits-hard · cnn · forget random:0.1"
    assert lines[2] == ("| Method | Start-up % | Data % | Unlearning % | Checkpoints % | Evaluation % | Data img/s "
                        "| Unlearning img/s | Evaluation img/s | Unlearning waiting on input % |")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ") and "---" not in line}
    assert rows["lotus"] == "| lotus | 11.1 | 22.2 | 55.6 | 0.0 | 11.1 | 300 | 240 | 500 | 60.0 |"
    assert rows["finetune"] == "| finetune | 7.1 | 14.3 | 71.4 | 0.0 | 7.1 | 300 | 450 | 500 | 10.0 |"
    assert rows["original"] == "| original | 25.0 | 50.0 | 0.0 | 0.0 | 25.0 | 300 | — | 500 | — |"
    assert rows["neggrad"] == "| neggrad | 2.9 | 7.1 | 85.7 | — | 4.3 | — | — | — | — |"
    assert "- lotus: input-bound: 60.0 % of its 50.0 s of unlearning waited for the next batch; 240 images/s" in text
    assert "- finetune: compute-bound: 10.0 % of its 100.0 s of unlearning" in text
    assert "- original: no unlearning to judge" in text
    assert "- neggrad: no verdict: its records carry no images or input-wait seconds" in text


def test_report_carries_the_time_breakdown_in_markdown_html_and_csv(tmp_path):
    from pipeline.results.report import write_report

    run = str(tmp_path / "run")
    for record in time_records():
        append_record(run, record)
    written = write_report([run], str(tmp_path / "out"))
    markdown = open(written["report.md"], encoding="utf-8").read()
    assert "## Where the time went" in markdown and "| lotus | 11.1 | 22.2 | 55.6 |" in markdown
    page = open(written["report.html"], encoding="utf-8").read()
    assert "<h2>Where the time went</h2>" in page
    assert '<td>lotus</td><td class="number">11.1</td>' in page
    assert "<li>lotus: input-bound: 60.0 % of its 50.0 s" in page
    frame = pd.read_csv(io.StringIO(open(written["report.csv"], encoding="utf-8").read())).set_index("method")
    assert frame.loc["lotus", "images_per_s_unlearn"] == pytest.approx(240.0)
    assert frame.loc["lotus", "input_wait_unlearn_share"] == pytest.approx(0.6)
    assert frame.loc["lotus", "bound"] == "input-bound" and frame.loc["finetune", "bound"] == "compute-bound"
    assert math.isnan(frame.loc["neggrad", "images_per_s_unlearn"])
