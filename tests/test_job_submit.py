"""A `ray job submit` round trip: a local Ray head (with its job server) runs a tiny bench job to SUCCEEDED.

The head is a separate `ray start --head --block` process with its own ports and temp dir, so it never
meets the session's in-process Ray (`ray_session`) nor another Ray on this machine: a plain `ray.init()`
elsewhere reads the default temp dir's address file, not this one. It is stopped by ending the process
group this test started (never `ray stop`, which would stop every Ray of this user on the machine).
"""

import importlib.util
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from pipeline.results.records import load_records
from tests.conftest import ROOT, clear_env

# What `ray[default]` adds to the `ray[train,data,tune]` the project installs: the dashboard process,
# which hosts the job server, does not start without them (RAY_NOTES §4).
DASHBOARD_MODULES = ("aiohttp", "aiohttp_cors", "grpc", "opencensus", "prometheus_client", "smart_open",
                     "virtualenv", "colorful", "opentelemetry.sdk", "opentelemetry.exporter.prometheus")
JOB_TIMEOUT_S = 420
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _missing_dashboard_modules() -> list[str]:
    missing = []
    for name in DASHBOARD_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        except ValueError:
            # already imported without a spec (Ray installs a stand-in `colorful` module): it is present
            found = name in sys.modules
        if not found:
            missing.append(name)
    return missing


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


@pytest.fixture
def ray_head(monkeypatch):
    """http://127.0.0.1:PORT of a fresh single-node Ray head with the dashboard (job server), 4 logical CPUs."""
    missing = _missing_dashboard_modules()
    if missing:
        pytest.skip(f"the job server needs ray[default]; missing modules: {', '.join(missing)}")
    # Ray's job client prefers these to the address it is given: a value left by another test sent it elsewhere.
    clear_env(monkeypatch, "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
    gcs, dashboard, agent_http, agent_grpc, metrics, runtime_env, client, node_manager, object_manager = \
        _free_ports(9)
    temp_dir = tempfile.mkdtemp(prefix="rjs-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           # the job's `python` comes from the head's PATH: make it this interpreter
           "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    command = [str(pathlib.Path(sys.executable).parent / "ray"), "start", "--head", "--block",
               "--num-cpus", "4", "--num-gpus", "0", "--object-store-memory", str(256 * 1024**2),
               "--port", str(gcs), "--include-dashboard=true", "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(dashboard), "--dashboard-agent-listen-port", str(agent_http),
               "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
               "--runtime-env-agent-port", str(runtime_env), "--ray-client-server-port", str(client),
               "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
               "--temp-dir", temp_dir, "--disable-usage-stats"]
    log_path = pathlib.Path(temp_dir) / "head.log"
    with open(log_path, "w") as log:
        head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dashboard}"
        _wait_for_job_server(address, head, log_path)
        yield address
    finally:
        _stop(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_job_server(address: str, head: subprocess.Popen, log_path: pathlib.Path, timeout_s: float = 180):
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout_s
    while True:
        if head.poll() is not None:
            raise AssertionError(f"ray start exited with {head.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            JobSubmissionClient(address).list_jobs()
            return
        except Exception as exc:  # connection refused / not ready yet
            if time.monotonic() > deadline:
                raise AssertionError(f"no job server at {address} after {timeout_s} s ({exc}):\n"
                                     f"{log_path.read_text()[-3000:]}") from exc
            time.sleep(1)


def _stop(head: subprocess.Popen) -> None:
    """End the process group this fixture started: `ray start --block` takes its Ray processes with it."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            return
        try:
            head.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def test_ray_job_submit_runs_a_tiny_bench_to_success(ray_head, digits_hard_uri, original_checkpoint, tmp_path):
    from ray.job_submission import JobSubmissionClient

    run = tmp_path / "run"
    entrypoint = " ".join([
        "python -m jobs.bench --config configs/demo.yaml --methods finetune",
        f"--set data.uri={digits_hard_uri} --set original.checkpoint={original_checkpoint}",
        f"--set models={tmp_path / 'models'} --set gold=false --set settings.finetune.epochs=1",
        f"--set ray.max_failures=0 --out {run}"])
    client = JobSubmissionClient(ray_head)
    job = client.submit_job(entrypoint=entrypoint,
                            runtime_env={"working_dir": str(ROOT),
                                         "env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}})
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (status := str(client.get_job_status(job).value)) not in TERMINAL and time.monotonic() < deadline:
        time.sleep(2)
    logs = client.get_job_logs(job)
    assert status == "SUCCEEDED", f"job {job} ended {status}:\n{logs[-4000:]}"

    assert {record.method for record in load_records(str(run))} == {"original", "finetune"}
    assert (run / "report" / "report.html").stat().st_size > 0
    assert re.search(r"^\| finetune( ⚠)? \|", logs, re.M) and str(run / "report" / "report.html") in logs
    # The driver joined the cluster the job server runs on, and said so (issue 34: docs/cli.md).
    assert re.search(r"^Ray: joined the cluster at \S+ \(RAY_ADDRESS from ray job submit\): 4 CPUs, 0 GPUs on 1 node",
                     logs, re.M), logs[:3000]
