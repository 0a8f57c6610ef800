"""validate-rfjsd: Pearson correlation of RF-JSD with JSD over (method, seed) points of a benchmark run."""

import json

import pytest

from jobs import validate_rfjsd
from pipeline.results.records import ResultRecord, append_record


def _record(method, seed, jsd, rf, config=None):
    return ResultRecord(run_id=f"r-{method}-{seed}", kind="unlearn", method=method, dataset="d", model="cnn", seed=seed,
                        forget_spec="random:0.1", metrics={"jsd": jsd, "rf_jsd": rf, "gold": True},
                        config=config or {})


def test_correlation_over_points_and_per_seed():
    records = [_record(m, s, jsd, 2 * jsd + 0.001 * s) for s in (1, 2) for m, jsd in
               (("a", 0.01), ("b", 0.02), ("c", 0.04), ("original", 0.05), ("retrain", 0.0))]
    records.append(_record("x", 1, None, 0.3))  # no gold: not a point
    rows = validate_rfjsd.points(records)
    assert len(rows) == 10
    summary = validate_rfjsd.correlation_summary(rows)
    assert summary["pcc_all"] == pytest.approx(1.0, abs=1e-3) and summary["pcc_mean"] == pytest.approx(1.0)
    assert validate_rfjsd.reference_rows(rows) == pytest.approx({"original": 1015.0, "retrain": 15.0})


def test_anti_correlated_values_give_negative_pcc():
    rows = [{"method": str(i), "seed": 0, "jsd": i, "rf_jsd": -i} for i in range(5)]
    assert validate_rfjsd.correlation_summary(rows)["pcc_all"] == pytest.approx(-1.0)


def test_command_reads_a_run_and_writes_its_summary(tmp_path, capsys):
    for method, jsd, rf in (("a", 0.01, 0.02), ("b", 0.02, 0.05), ("c", 0.03, 0.05)):
        append_record(str(tmp_path), _record(method, 3407, jsd, rf))
    assert validate_rfjsd.main(["--run", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PCC(RF-JSD, JSD) over 3 points: 0.866" in out
    assert "RF-JSD floor: skipped (the records name no data or original model)" in out
    assert (tmp_path / "rfjsd_validation.json").exists()


def test_the_floor_comes_from_the_runs_data_and_original_and_flags_methods_below_it(tmp_path, capsys, digits_hard_uri,
                                                                                   original_checkpoint):
    from tests.conftest import SEED

    config = {"data": digits_hard_uri, "original": original_checkpoint}
    # RF-JSD x1e4 of 1 (far below any sampling floor at 8 samples per class) and 5000 (far above it).
    for method, jsd, rf in (("smooth", 0.05, 1e-4), ("sharp", 0.1, 0.5), ("original", 0.2, 0.6)):
        append_record(str(tmp_path), _record(method, SEED, jsd, rf, config))
    assert validate_rfjsd.main(["--run", str(tmp_path), "--floor-draws", "20"]) == 0
    out = capsys.readouterr().out
    assert f"below that floor (smoother on D_f than unseen data looks, not better forgetting): smooth s{SEED} 1.0" in out
    saved = json.loads((tmp_path / "rfjsd_validation.json").read_text())
    floor = saved["floors"][str(SEED)]
    assert 10 < floor["mean_e4"] < 5000 and floor["draws"] == 20 and floor["below"] == [["smooth", 1.0]]


def test_a_run_without_gold_metrics_is_a_clear_error(tmp_path):
    from pipeline.errors import DataError

    append_record(str(tmp_path), _record("a", 1, None, 0.1))
    with pytest.raises(DataError, match="has both JSD and RF-JSD"):
        validate_rfjsd.main(["--run", str(tmp_path)])


def test_a_floor_that_cannot_be_computed_is_skipped_with_the_reason_and_the_summary_still_written(tmp_path, capsys):
    config = {"data": str(tmp_path / "moved-data"), "original": str(tmp_path / "moved.pt")}
    for method, jsd, rf in (("a", 0.01, 0.02), ("b", 0.02, 0.05), ("c", 0.03, 0.05)):
        append_record(str(tmp_path), _record(method, 3407, jsd, rf, config))
    assert validate_rfjsd.main(["--run", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "RF-JSD floor: skipped (seed 3407: " in out and "moved-data" in out
    assert json.loads((tmp_path / "rfjsd_validation.json").read_text())["pcc_all"] is not None


def test_a_floor_the_workers_recorded_is_used_without_reading_the_data(tmp_path, capsys):
    config = {"data": str(tmp_path / "moved-data"), "original": str(tmp_path / "moved.pt")}  # never read
    for method, jsd, rf in (("a", 0.01, 0.002), ("b", 0.02, 0.05), ("c", 0.03, 0.06)):
        record = _record(method, 3407, jsd, rf, config)
        record.metrics.update(rf_jsd_floor=0.03, rf_jsd_floor_std=0.004, rf_jsd_floor_draws=200)
        append_record(str(tmp_path), record)
    assert validate_rfjsd.main(["--run", str(tmp_path)]) == 0
    assert "below that floor (smoother on D_f than unseen data looks, not better forgetting): a s3407 20.0" in \
        capsys.readouterr().out
    floor = json.loads((tmp_path / "rfjsd_validation.json").read_text())["floors"]["3407"]
    assert floor["mean_e4"] == pytest.approx(300.0) and floor["std_e4"] == pytest.approx(40.0)
    assert floor["from"] == "records" and floor["draws"] == 200
