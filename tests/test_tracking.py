"""MLflow tracking (--mlflow): records logged as runs to a local store or a real `mlflow server` on 127.0.0.1
(tests/test_mlflow_optional.py: MLflow never imported without the flag). A real `unlearn run --mlflow` is checked in tests/test_console.py
and the sweep's nested trial runs in tests/test_sweep.py, on runs those tests make anyway."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.results.tracking import log_records, tracking_uri
from tests.test_results import make_record

mlflow = pytest.importorskip("mlflow")
ROOT = Path(__file__).resolve().parents[1]
HISTORY = [{"epoch": e, "loss": 1.0 - 0.1 * e, "tau": 4.0 - e, "acc_f": 1.0, "acc_u": 0.8} for e in range(3)]


def lotus_record():
    return make_record("lotus", 3407, config={"lotus": {"alpha": 8, "lr": 1e-4}, "data": "/d", "history": HISTORY},
                       rf_jsd_floor_e4=300.0)


def runs_of(uri: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments])


def assert_logged(uri: str, artifact: str | None = None):
    (run,) = runs_of(uri)
    assert run.data.params["lotus.alpha"] == "8" and run.data.params["data"] == "/d"
    assert run.data.metrics["acc_forget"] == pytest.approx(0.70)
    assert run.data.metrics["rf_jsd_floor_e4"] == pytest.approx(300.0)
    assert run.data.metrics["seconds.unlearn"] == pytest.approx(60.0)
    assert run.data.tags["method"] == "lotus" and run.info.run_name == "lotus-s3407"
    client = mlflow.MlflowClient(tracking_uri=uri)
    tau = client.get_metric_history(run.info.run_id, "epoch.tau")
    assert [(m.step, m.value) for m in sorted(tau, key=lambda m: m.step)] == [(0, 4.0), (1, 3.0), (2, 2.0)]
    if artifact:
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == [artifact]


def test_without_a_uri_records_go_to_a_local_store_under_out(tmp_path):
    report = tmp_path / "report.html"
    report.write_text("<html></html>")
    uri = tracking_uri("local", str(tmp_path / "out"))
    assert uri == f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    log_records(uri, [lotus_record()], [str(report)])
    assert_logged(uri, "report.html")
    assert (tmp_path / "out" / "mlartifacts").is_dir()  # beside the store, not in the working directory


def test_a_local_store_under_an_s3_out_is_refused_and_a_given_uri_is_kept():
    with pytest.raises(ConfigError, match="give a tracking server"):
        tracking_uri("local", "s3://bucket/run")
    assert tracking_uri("http://127.0.0.1:5000", "s3://bucket/run") == "http://127.0.0.1:5000"
    assert tracking_uri(None, "x") is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--default-artifact-root", (tmp_path / "artifacts").as_uri()],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"OK":
                break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("mlflow server did not come up on 127.0.0.1 within 120 s")
    yield url
    server.kill()  # a graceful stop waits seconds for the server's workers; nothing of it is kept
    server.wait(timeout=30)


def test_records_reach_a_real_mlflow_server(mlflow_server):
    log_records(mlflow_server, [lotus_record()])
    assert_logged(mlflow_server)
