"""What every run shares: the S3 endpoint, checks made before Ray starts, the dataset and RF-JSD floor plan,
phase timing and the versions a record carries."""

from __future__ import annotations

import os
import time

from pipeline import storage
from pipeline.errors import ConfigError
from pipeline.runs.spec import DataSpec
from pipeline.storage import ENDPOINT_ENV
from pipeline.train.console import log


def use_endpoint(endpoint: str | None) -> None:
    """Export an S3 endpoint before Ray starts, so every Ray process inherits it (RAY_NOTES §1)."""
    if endpoint:
        os.environ[ENDPOINT_ENV] = endpoint


def check_output_uri(uri: str) -> None:
    """The output must be a folder (or S3 prefix in an existing bucket) that can be created and written."""
    if storage.is_s3(uri):
        storage.ensure_bucket(uri)
        return
    path = os.path.abspath(uri)
    if os.path.isfile(path):
        raise ConfigError(f"--out {uri} is an existing file, not a folder")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"--out {uri} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {uri} is not writable ({existing} does not allow it)")


def check_model_fits_data(spec, meta, model_uri: str, data_uri: str) -> None:
    """Refuse, before Ray starts, a checkpoint built for other data: its class count or its input channels.

    Neither fails by itself later: a 3-channel model broadcasts a grey image over its three
    normalisation channels and runs to a chance-level "result".
    """
    if spec.num_classes != meta.num_classes:
        raise ConfigError(f"{model_uri} predicts {spec.num_classes} classes but {data_uri} has {meta.num_classes}")
    if spec.channels != meta.channels:
        raise ConfigError(f"{model_uri} takes {spec.channels}-channel images but {data_uri} has {meta.channels}-channel "
                          f"images ({meta.name}); use a model trained on this data")


def open_dataset(data: DataSpec):
    """Read and (unless data.verify is off) checksum-verify a dataset's metadata; return (meta, index)."""
    from pipeline.data.shards import read_index, read_meta, verify_checksums

    meta = read_meta(data.uri)
    if data.verify:
        verify_checksums(data.uri, meta)
    return meta, read_index(data.uri, meta)


def plan_floor(index, splits, num_classes: int, draws: int | None, seed: int):
    """RF-JSD floor's draws (pipeline/metrics/floor.py), planned on the driver from the shard index so that
    every worker sums the same ones; None for 0 draws or when no class of D_f can be drawn."""
    import numpy as np

    from pipeline.metrics.floor import default_floor_draws, plan_floor_draws

    if draws == 0:
        return None
    if draws is not None and draws < 0:
        raise ConfigError(f"--floor-draws must be 0 or more, not {draws}")
    labels = index.column("label").to_numpy()
    ids = index.column("sample_id").to_numpy(zero_copy_only=False)
    test = splits.select(index, "test")

    def class_counts(name: str):
        return np.bincount(labels[splits.select(index, name)], minlength=num_classes)

    plan = plan_floor_draws(ids[test], labels[test], class_counts("forget"), class_counts("unseen"),
                            draws or default_floor_draws(num_classes), seed)
    if plan is None:
        log("RF-JSD floor: skipped (no class of D_f has D_test and D_u samples)")
    return plan


def log_restarts(restarts: list[dict]) -> None:
    """One line per time a run went on from a checkpoint (pipeline.train.runner.read_restarts)."""
    for restart in restarts:
        epoch = restart["resumed_after_epoch"]
        where = "from the start" if epoch is None else f"after epoch {epoch}"
        log(f"restarted at {restart['time']} {where}: {restart['cause']}")


class Phases:
    """Wall-clock seconds per phase (startup, data, unlearn, epoch_reports, eval, total)."""

    def __init__(self):
        self.started = time.perf_counter()
        self._mark = self.started
        self.seconds: dict[str, float] = {}

    def lap(self, name: str) -> float:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._mark
        self._mark = now
        return self.seconds[name]

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": time.perf_counter() - self.started}


def versions() -> dict:
    import platform

    import ray
    import torch

    import pipeline

    return {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "package": pipeline.__version__}
