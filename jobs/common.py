"""What every job shares: the common flags (each defined once), the typed specs built from them, MLflow
tracking, and turning user errors into a message and exit 2. The runs themselves are in pipeline/runs."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from pipeline.config import parse_overrides
from pipeline.errors import ConfigError, StorageUnavailableError, UnlearnError
from pipeline.runs.common import use_endpoint
from pipeline.runs.spec import DEFAULT_CACHE_MB, DataSpec, RayResources
from pipeline.storage import ENDPOINT_ENV
from pipeline.train.console import VERBOSE_ENV, log
from pipeline.train.data_modes import DATA_MODES
from pipeline.train.ray_address import add_address_flag, use_address


def add_endpoint_flag(parser: argparse.ArgumentParser, extra: str = "") -> None:
    parser.add_argument("--s3-endpoint", help=f"S3-compatible endpoint URL (default: ${ENDPOINT_ENV}){extra}")


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="shard dataset URI (local path or s3://bucket/prefix)")
    add_endpoint_flag(parser)
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
    add_address_flag(parser)
    add_verbose_flag(parser)


def add_mlflow_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mlflow", nargs="?", const="local", metavar="URI",
                        help="log each run to MLflow: a tracking server (http://HOST:5000) or store URI; without a "
                             "URI a local store under --out (OUT/mlflow.db). Without the flag MLflow is not used")


def check_mlflow(mlflow: str | None, out: str) -> str | None:
    """The tracking URI of --mlflow (None without it), checked before any compute."""
    if mlflow is None:
        return None
    import importlib.util

    from pipeline.results.tracking import tracking_uri

    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError("--mlflow needs MLflow: pip install 'ray-unlearn[mlflow]'")
    return tracking_uri(mlflow, out)


def track(mlflow: str | None, out: str, records, artifacts=(), **options) -> None:
    """Log the records to MLflow when --mlflow was given; MLflow is imported only then."""
    uri = check_mlflow(mlflow, out)
    if uri is None or not records:
        return
    from pipeline.results.tracking import log_records

    log_records(uri, list(records), list(artifacts), **options)
    log(f"MLflow: {len(records)} run(s) logged to {uri}")


def add_overwrite_flag(parser: argparse.ArgumentParser, holds: str = "a run of the same name") -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help=f"start this run afresh (its checkpoints deleted) even if --out holds {holds} with other "
                             "settings, or unfinished from another --workers count")


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ray's own lines (worker groups, per-epoch reports and checkpoints, Tune's "
                             "tables); its warnings and errors show either way")


def add_floor_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--floor-draws", type=int, default=None,
                        help="draws from D_test for RF-JSD's sampling floor, what a model that never saw D_f "
                             "scores by sampling alone (default: 200, fewer for many classes; 0: no floor)")


def apply_endpoint(args: argparse.Namespace) -> None:
    """Export --s3-endpoint, --address and --verbose before Ray starts, so every Ray process inherits them
    (RAY_NOTES §1)."""
    use_endpoint(getattr(args, "s3_endpoint", None))
    use_address(getattr(args, "address", None))
    if getattr(args, "verbose", False):
        os.environ[VERBOSE_ENV] = "1"


def data_spec(args: argparse.Namespace) -> DataSpec:
    """The data flags (add_data_flags) as a DataSpec."""
    return DataSpec(uri=args.data, verify=not args.no_verify, mode=args.data_mode, cache_mb=args.cache_mb,
                    s3_endpoint=args.s3_endpoint)


def ray_resources(args: argparse.Namespace) -> RayResources:
    """The Ray flags (add_ray_flags) as RayResources."""
    return RayResources(workers=args.workers, gpus=args.gpus, cpus_per_worker=args.cpus_per_worker,
                        max_failures=args.max_failures, channels_last=args.channels_last)


def method_overrides(method: str, pairs: list[str]) -> dict:
    """--set METHOD.KEY=VALUE pairs as the run's settings; naming another method is an error."""
    overrides = parse_overrides(pairs)
    unknown = sorted(set(overrides) - {method})
    if unknown:
        raise ConfigError(f"--set names method(s) {unknown} but this run is {method!r}")
    return overrides.get(method, {})


# sysexits' EX_TEMPFAIL: storage kept failing in a way that may pass; the same command, rerun later, goes on.
EXIT_STORAGE_UNAVAILABLE = 75


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a job's main; a user error prints one clear line on stderr and exits 2 (no traceback), and so does
    storage that stayed unavailable through every retry, with exit 75."""
    try:
        return main(argv)
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StorageUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STORAGE_UNAVAILABLE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


