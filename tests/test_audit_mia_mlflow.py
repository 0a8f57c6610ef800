"""`unlearn audit-mia --mlflow [URI]` (no Ray): an audit's figures logged as one MLflow run, the flag checked before
any compute, and MLflow never imported without it. The result dict has the shape `audit()` returns
(pipeline/runs/audit_mia.py); the audit itself runs on Ray in tests/test_ulira_bank.py."""

import os
import subprocess
import sys

import pytest

from jobs.audit_mia import audit_record, main, parser
from jobs.common import track
from pipeline.errors import ConfigError
from tests.conftest import ROOT
from tests.test_mlflow_optional import REFUSE_MLFLOW


def interval(value: float) -> dict:
    return {"value": value, "low": value - 0.07, "high": value + 0.07}


def audit_result(out) -> dict:
    trials = {"auc": interval(0.69), "tpr_at_fpr": {"0.01": interval(0.03)}}
    return {"variant": "online", "method": "lotus", "settings": {"alpha": 8}, "recipe": {"epochs": 15},
            "data": "/d", "dataset": "digits-hard", "model": str(out / "lotus.pt"), "model_name": "cnn",
            "forget": "random:0.1", "seed": 3407, "original": "/o.pt", "gold": "/g.pt", "fprs": [0.01],
            "positives": 80, "negatives": 80,
            "target": {"auc": interval(0.75), "balanced_accuracy": interval(0.7), "tpr_at_fpr": {"0.01": None}},
            "shadow_trials": trials, "entropy_mia": {"mia": 0.237, "mia_unseen": 0.26},
            "anchors": {"original": {"auc": interval(0.994), "passed": True},
                        "gold": {"auc": interval(0.49), "passed": True}},
            "trusted": True, "warnings": [],
            "bank": {"uri": "/bank", "shadows_requested": 16, "shadows_served": 16, "trained_now": [], "failed": {}},
            "seconds": {"shadow_training": 0.0, "audit_tasks": 201.0, "total": 218.0}}


def test_an_audit_is_one_mlflow_run_with_its_figures_and_files(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    out = tmp_path / "out"
    out.mkdir()
    files = [out / "ulira.json", out / "ulira-scores.npz"]
    for path in files:
        path.write_bytes(b"{}")
    track("local", str(out), [audit_record(audit_result(tmp_path))], [str(p) for p in files],
          tags={"kind": "audit-mia"})
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    metrics = run.data.metrics
    assert metrics["ulira_auc"] == pytest.approx(0.75) and metrics["ulira_shadow_tpr_1pct"] == pytest.approx(0.03)
    assert metrics["ulira_original_auc"] == pytest.approx(0.994) and metrics["ulira_gold_passed"] == 1.0
    assert metrics["mia"] == pytest.approx(0.237) and metrics["seconds.audit_tasks"] == pytest.approx(201.0)
    assert "ulira_tpr_1pct" not in metrics  # 80 never-seen samples cannot resolve 1 % FPR: not logged as a number
    assert run.data.params["u_lira.variant"] == "online" and run.data.params["lotus.alpha"] == "8"
    assert run.data.tags["kind"] == "audit-mia" and run.info.run_name == "lotus-s3407"
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["ulira-scores.npz", "ulira.json"]


def flags(tmp_path, *extra: str) -> list[str]:
    return ["--data", str(tmp_path / "no-data"), "--model", str(tmp_path / "no-model.pt"), "--method", "lotus",
            "--bank", str(tmp_path / "bank"), *extra]


def test_a_local_store_under_an_s3_out_is_refused_before_any_work(tmp_path):
    """The data and model do not exist: the refusal names MLflow, so it came before they were looked at."""
    with pytest.raises(ConfigError, match="--mlflow without a URI keeps its store under --out"):
        main(flags(tmp_path, "--out", "s3://bucket/audit", "--mlflow"))


def test_without_the_flag_audit_mia_never_imports_mlflow(tmp_path):
    code = (REFUSE_MLFLOW +
            "from jobs import audit_mia\n"
            f"args = audit_mia.parser().parse_args({flags(tmp_path, '--out', str(tmp_path / 'out'))!r})\n"
            "audit_mia.check_flags(args)\n"
            "audit_mia.track(args.mlflow, args.out, [object()])\n"
            "assert not [name for name in sys.modules if name.split('.')[0] == 'mlflow']\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert parser().parse_args(flags(tmp_path, "--out", "x", "--mlflow")).mlflow == "local"
