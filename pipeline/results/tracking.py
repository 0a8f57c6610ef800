"""MLflow tracking, optional: a job given `--mlflow [URI]` logs each run's record there; without the flag this
module is never imported, and neither is MLflow.

One MLflow run per result record: the resolved config as params, every metric (accuracies, MIA, JSD, RF-JSD and
its floor, Avg Gap) and the seconds per phase as metrics, the per-epoch history (loss, LoTUS's τ, acc_f, acc_u)
as step metrics, and report or receipt files as artifacts. The experiment is the record's dataset. Without a
URI the store is a local SQLite file under the job's --out (`mlflow ui --backend-store-uri sqlite:///...`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile

from pipeline import storage
from pipeline.errors import ConfigError, DataError
from pipeline.results.records import ResultRecord

LOCAL = "local"  # the flag's value when given without a URI
STORE_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
PARAM_VALUE_LIMIT = 500  # MLflow refuses longer param values
BATCH = 100  # params/metrics per log_batch call, under MLflow's limits


def tracking_uri(flag: str | None, out: str) -> str | None:
    """None without --mlflow; the URI given; or a SQLite store under --out (which must then be local)."""
    if flag is None:
        return None
    if flag != LOCAL:
        return flag
    if storage.is_s3(out):
        raise ConfigError(f"--mlflow without a URI keeps its store under --out, and {out} is on S3: give a tracking "
                          "server (--mlflow http://HOST:5000) or a local store (--mlflow sqlite:////path/mlflow.db)")
    folder = os.path.abspath(out)
    os.makedirs(folder, exist_ok=True)
    return f"sqlite:///{os.path.join(folder, STORE_NAME)}"


def _artifact_root(uri: str) -> str | None:
    """Artifacts of a local SQLite store go beside it (MLflow's default is the working directory)."""
    if uri.startswith("sqlite:///"):
        return "file://" + os.path.join(os.path.dirname(uri.removeprefix("sqlite:///")), ARTIFACTS_DIR)
    return None


def _client(uri: str):
    try:
        import mlflow
    except ImportError:
        raise ConfigError("--mlflow needs MLflow: pip install 'ray-unlearn[mlflow]' (or mlflow)") from None
    return mlflow.MlflowClient(tracking_uri=uri)


def experiment_id(client, name: str, uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=_artifact_root(uri) and f"{_artifact_root(uri)}/{name}")


def start_parent_run(uri: str, experiment: str, name: str, params: dict | None = None) -> str:
    """A run that others nest under (a sweep): returns its id; close it with `end_run`."""
    client = _client(uri)
    run = client.create_run(experiment_id(client, experiment, uri), run_name=name)
    _log_params(client, run.info.run_id, params or {})
    return run.info.run_id


def end_run(uri: str, run_id: str) -> None:
    _client(uri).set_terminated(run_id)


def log_records(uri: str, records: list[ResultRecord], artifacts: list[str] = (), parent_run_id: str | None = None,
                tags: dict | None = None) -> list[str]:
    """One MLflow run per record (nested under `parent_run_id`), `artifacts` (local or s3:// files) attached to
    each; returns the run ids."""
    client = _client(uri)
    run_ids = []
    for record in records:
        run_tags = {"kind": record.kind, "method": record.method, "seed": str(record.seed),
                    "forget_spec": record.forget_spec, "model": record.model, "status": record.status,
                    "run_id": record.run_id, **(tags or {})}
        if parent_run_id:
            run_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id(client, record.dataset, uri), run_name=f"{record.method}-s{record.seed}",
                                tags=run_tags)
        run_id = run.info.run_id
        _log_params(client, run_id, record.config)
        _log_metrics(client, run_id, record)
        for artifact in artifacts:
            _log_artifact(client, run_id, artifact)
        client.set_terminated(run_id, status="FINISHED" if record.status == "ok" else "FAILED")
        run_ids.append(run_id)
    return run_ids


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if key == "history":
            continue  # logged as step metrics
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _log_params(client, run_id: str, config: dict) -> None:
    from mlflow.entities import Param

    params = [Param(key, (value if isinstance(value, str) else json.dumps(value, default=str))[:PARAM_VALUE_LIMIT])
              for key, value in sorted(_flat(config).items())]
    for start in range(0, len(params), BATCH):
        client.log_batch(run_id, params=params[start:start + BATCH])


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) or math.isinf(value) else float(value)


def _log_metrics(client, run_id: str, record: ResultRecord) -> None:
    from mlflow.entities import Metric

    stamp = 0
    values = {**record.metrics, **{f"seconds.{k}": v for k, v in record.phases.items()},
              "unlearn_seconds": record.unlearn_seconds}
    metrics = [Metric(key, number, stamp, 0) for key, value in sorted(values.items())
               if (number := _number(value)) is not None]
    for entry in record.config.get("history") or []:
        step = int(entry.get("epoch", 0))
        metrics += [Metric(f"epoch.{key}", number, stamp, step) for key, value in entry.items()
                    if key != "epoch" and (number := _number(value)) is not None]
    for start in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + BATCH])


def _log_artifact(client, run_id: str, uri: str) -> None:
    if not storage.is_s3(uri):
        client.log_artifact(run_id, uri)
        return
    try:
        data = storage.read_bytes(uri)
    except DataError:
        return
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, uri.rsplit("/", 1)[-1])
        with open(path, "wb") as handle:
            handle.write(data)
        client.log_artifact(run_id, path)
