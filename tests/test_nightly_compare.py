"""The nightly's `--compare yesterday` on the first night, or after a skipped one (issue 34): the previous run holds
no records, and the bench must still write its report, say there was nothing to compare with and exit 0. Without
Ray: the bench's rows are already recorded, so it only rebuilds the report and runs the check."""

import pathlib

import yaml

from jobs import bench, report
from pipeline.results.records import append_record
from tests.test_bench import run_job
from tests.test_results import make_record


def finished_run(tmp_path: pathlib.Path) -> tuple[str, str]:
    """A bench config (original, retrain, lotus; seed 0) and its run URI with every row recorded."""
    config = tmp_path / "nightly.yaml"
    config.write_text(yaml.safe_dump({"name": "nightly", "data": {"uri": str(tmp_path / "no-data-needed")},
                                      "methods": ["lotus"], "seeds": [0]}))
    run = str(tmp_path / "nightly" / "2026-12-07")
    for method in ("original", "retrain", "lotus"):
        append_record(run, make_record(method, 0))
    return str(config), run


def test_the_first_night_writes_its_report_and_says_there_was_nothing_to_compare_with(tmp_path):
    config, run = finished_run(tmp_path)
    yesterday = str(tmp_path / "nightly" / "2026-12-06")  # never written: the first night, or a skipped one
    status, printed = run_job(bench.main, ["--config", config, "--out", run, "--compare", yesterday])
    assert status == 0, printed
    assert f"Nothing to compare with: no result records under {yesterday}" in printed
    assert printed.index("The report will say so.") < printed.index("report: ")  # said before any work
    folder = pathlib.Path(run) / "report"
    for name in ("report.md", "report.html", "regressions.txt"):
        assert "Nothing to compare with" in (folder / name).read_text(), name


def test_a_missing_night_among_several_is_named_and_the_others_are_still_checked(tmp_path):
    config, run = finished_run(tmp_path)
    before, skipped = str(tmp_path / "nightly" / "2026-12-05"), str(tmp_path / "nightly" / "2026-12-06")
    for method in ("original", "retrain"):
        append_record(before, make_record(method, 0, run_id=f"old-{method}"))
    append_record(before, make_record("lotus", 0, run_id="old-lotus", acc_test=0.9))  # tonight's 0.68 regressed
    status, printed = run_job(report.main, [run, "--compare", skipped, before])
    assert status == report.EXIT_REGRESSED
    assert "1 regression(s) beyond the bands:" in printed and f"Not compared: no result records under {skipped}." in printed


def test_a_missing_bucket_is_still_an_error(tmp_path, s3_server, capsys):
    from jobs.common import run_main

    config, run = finished_run(tmp_path)
    assert run_main(bench.main, ["--config", config, "--out", run, "--compare", "s3://no-such-bucket/nightly/x"]) == 2
    assert "the bucket 'no-such-bucket' does not exist" in capsys.readouterr().err
