"""What every job shares: common flags, S3 endpoint set-up, and turning user errors into a message and exit 2."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import Callable

from pipeline import storage
from pipeline.errors import ConfigError, UnlearnError
from pipeline.storage import ENDPOINT_ENV
from pipeline.train.datasets import DATA_MODES
from pipeline.train.ray_sources import DEFAULT_CACHE_MB
from pipeline.train.console import VERBOSE_ENV


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="shard dataset URI (local path or s3://bucket/prefix)")
    parser.add_argument("--s3-endpoint", help=f"S3-compatible endpoint URL (default: ${ENDPOINT_ENV})")
    parser.add_argument("--no-verify", action="store_true", help="skip sha256 verification of the shards")
    parser.add_argument("--data-mode", choices=DATA_MODES, default="auto",
                        help="stream: read and decode the shards every epoch; memory: decode once into Ray's "
                             "object store; auto (default): memory when the decoded data is under 256 MiB")
    parser.add_argument("--cache-mb", type=float, default=DEFAULT_CACHE_MB,
                        help="per worker: memory (GPU memory on a GPU worker) for sets kept decoded after their "
                             f"first pass, so later epochs replay them instead of reading again (default "
                             f"{DEFAULT_CACHE_MB}; 0: read every pass). Results are the same either way")


def add_ray_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP processes)")
    parser.add_argument("--gpus", action="store_true", help="one GPU per worker")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--max-failures", type=int, default=1,
                        help="worker-group restarts before giving up (each resumes from the last epoch checkpoint)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format (GPU convnets)")
    add_verbose_flag(parser)


def add_mlflow_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mlflow", nargs="?", const="local", metavar="URI",
                        help="log each run to MLflow: a tracking server (http://HOST:5000) or store URI; without a "
                             "URI a local store under --out (OUT/mlflow.db). Without the flag MLflow is not used")


def check_mlflow(args: argparse.Namespace) -> str | None:
    """The tracking URI of --mlflow (None without it), checked before any compute."""
    if getattr(args, "mlflow", None) is None:
        return None
    import importlib.util

    from pipeline.results.tracking import tracking_uri

    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError("--mlflow needs MLflow: pip install 'ray-unlearn[mlflow]'")
    return tracking_uri(args.mlflow, args.out)


def track(args: argparse.Namespace, records, artifacts=(), **options) -> None:
    """Log the records to MLflow when --mlflow was given; MLflow is imported only then."""
    uri = check_mlflow(args)
    if uri is None or not records:
        return
    from pipeline.results.tracking import log_records

    log_records(uri, list(records), list(artifacts), **options)
    log(f"MLflow: {len(records)} run(s) logged to {uri}")


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ray's own lines (worker groups, per-epoch reports and checkpoints, Tune's "
                             "tables); its warnings and errors show either way")


def add_floor_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--floor-draws", type=int, default=None,
                        help="draws from D_test for RF-JSD's sampling floor, what a model that never saw D_f "
                             "scores by sampling alone (default: 200, fewer for many classes; 0: no floor)")


def plan_floor(index, splits, num_classes: int, draws: int | None, seed: int):
    """RF-JSD floor's draws (pipeline/metrics/floor.py), planned on the driver from the shard index so that
    every worker sums the same ones; None for --floor-draws 0 or when no class of D_f can be drawn."""
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


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_run_arguments(args: argparse.Namespace) -> None:
    """The flags every Ray job shares, checked in the driver before anything starts (milliseconds, not a
    traceback from a worker half a minute later)."""
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {args.workers}")
    if args.cpus_per_worker <= 0:
        raise ConfigError(f"--cpus-per-worker must be above 0, not {args.cpus_per_worker}")
    if args.max_failures < -1:
        raise ConfigError(f"--max-failures must be -1 (retry forever) or more, not {args.max_failures}")
    name = getattr(args, "name", None)
    if name is not None and (not SAFE_NAME.fullmatch(name) or ".." in name):
        raise ConfigError(f"--name {name!r} must be letters, digits, '.', '_' or '-' (no path separators or '..'): "
                          "it names files under --out")
    check_output_uri(args.out)
    check_mlflow(args)


def check_output_uri(uri: str) -> None:
    """--out must be a folder (or S3 prefix in an existing bucket) that can be created and written."""
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


def apply_endpoint(args: argparse.Namespace) -> None:
    """Export the endpoint and --verbose before Ray starts, so every Ray process inherits them (RAY_NOTES §1)."""
    if getattr(args, "s3_endpoint", None):
        os.environ[ENDPOINT_ENV] = args.s3_endpoint
    if getattr(args, "verbose", False):
        os.environ[VERBOSE_ENV] = "1"


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


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a job's main; a user error prints one clear line on stderr and exits 2 (no traceback)."""
    try:
        return main(argv)
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def log(message: str) -> None:
    print(message, flush=True)


def versions() -> dict:
    import platform

    import ray
    import torch

    import pipeline

    return {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "package": pipeline.__version__}


def open_dataset(args):
    """Read and (unless --no-verify) checksum-verify a dataset's metadata; return (meta, index)."""
    from pipeline.data.shards import read_index, read_meta, verify_checksums

    meta = read_meta(args.data)
    if not args.no_verify:
        verify_checksums(args.data, meta)
    return meta, read_index(args.data, meta)
