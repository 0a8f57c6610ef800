"""A normal run's console holds the project's own lines; Ray's INFO lines need --verbose (a real run in a
subprocess: the test session's own Ray would hide what a user's console shows). The same run logs to MLflow's
local store under --out (--mlflow without a URI)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.train.console import VERBOSE_ENV, verbose
from tests.conftest import SEED

ROOT = Path(__file__).resolve().parents[1]
RAY_NOISE = ("Reporting training result", "Checkpoint successfully created", "core_worker.cc",
             "PreemptionWatcher", "Requesting resources", "Attempting to start training worker group",
             "Setting up process group", "Started training worker group", "exclude_resources",
             "PYTHON worker processes")


def test_a_normal_run_prints_the_projects_lines_and_none_of_rays(digits_hard_uri, original_checkpoint, tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in (VERBOSE_ENV, "RAY_ADDRESS")}
    tracked = importlib.util.find_spec("mlflow") is not None
    run = subprocess.run(
        [sys.executable, "-m", "jobs.unlearn", "--data", digits_hard_uri, "--original", original_checkpoint,
         "--method", "lotus", "--set", "lotus.epochs=1", "--seed", str(SEED), "--out", str(tmp_path),
         "--max-failures", "0", *(["--mlflow"] if tracked else [])],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    console = run.stdout + run.stderr
    assert run.returncode == 0, console
    assert "[lotus] epoch 1/1 done" in console and "[lotus] Acc_f" in console
    assert [line for line in console.splitlines() if any(noise in line for noise in RAY_NOISE)] == []
    if tracked:
        assert_logged_to_mlflow(tmp_path)


def assert_logged_to_mlflow(out: Path) -> None:
    """The run's record is an MLflow run in OUT/mlflow.db: its metrics, and its epochs as step metrics."""
    import mlflow

    from pipeline.results.records import load_records

    (record,) = load_records(str(out))
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.tags["run_id"] == record.run_id and run.data.params["lotus.epochs"] == "1"
    assert run.data.metrics["rf_jsd"] == pytest.approx(record.metrics["rf_jsd"])
    assert len(client.get_metric_history(run.info.run_id, "epoch.tau")) == record.config["epochs_run"]


@pytest.mark.parametrize("value, expected", [(None, False), ("", False), ("0", False), ("1", True)])
def test_verbose_follows_the_environment_every_ray_process_inherits(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(VERBOSE_ENV, raising=False)
    else:
        monkeypatch.setenv(VERBOSE_ENV, value)
    assert verbose() is expected


def test_the_verbose_flag_is_exported_before_ray_starts(monkeypatch):
    from jobs import unlearn
    from jobs.common import apply_endpoint

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    args = unlearn.parser().parse_args(["--data", "d", "--original", "o", "--method", "lotus", "--out", "x",
                                        "--verbose"])
    apply_endpoint(args)
    assert os.environ[VERBOSE_ENV] == "1"
