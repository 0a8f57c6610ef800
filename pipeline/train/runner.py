"""Driver side: start Ray, launch a TorchTrainer over the worker loop, turn failures into clear errors."""

from __future__ import annotations

import os

from pipeline import storage
from pipeline.errors import UnlearnError
from pipeline.train.loop import worker_loop


def init_ray(num_workers: int = 1, cpus_per_worker: float = 1.0) -> None:
    """Attach to a cluster (RAY_ADDRESS, or inside `ray job submit`) or start a local one with spare CPUs.

    A local Ray needs logical CPUs beyond the Train workers' or Ray Data's read
    tasks never get scheduled (RAY_NOTES §6); logical CPUs may exceed cores.
    A local Ray has no dashboard, so Ray Train's placement-group cleaner cannot
    reach the state API and warns every second: Ray's own log level is raised
    to ERROR there, which leaves the progress lines (plain prints) readable. Ray Train's controller keeps
    its default health-check interval (2 s): polled every 0.5 s it took enough of a 2-core machine to slow
    the training beside it by up to a tenth (`python -m benchmarks.ray_overhead`).
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        # Train V2 routes workers' prints through its logger and also prints them, so every progress
        # line would appear twice on a local console.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")  # not a line per pass over every set
        needed = int(num_workers * cpus_per_worker) + 2
        ray.init(num_cpus=max(os.cpu_count() or 1, needed), include_dashboard=False,
                 object_store_memory=512 * 1024**2 if not os.environ.get("CI") else 256 * 1024**2,
                 logging_config=ray.LoggingConfig(log_level="ERROR"))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def run_trainer(loop_config: dict, run_uri: str, name: str, workers: int = 1, use_gpu: bool = False,
                cpus_per_worker: float = 1.0, max_failures: int = 0, callbacks: list | None = None,
                loop=worker_loop) -> dict:
    """Fit the worker loop; return rank 0's return value. A rerun with the same run_uri/name resumes.

    `callbacks` (e.g. Tune's TuneReportCallback) see every epoch's report; `loop` replaces the
    unlearning loop (the ingest benchmark's reading loop). The data travels in the loop config as a
    DataPlan, not as Ray Train datasets: each worker reads its fixed share of every set itself
    (pipeline/train/ray_sources.py), which makes the batches a function of the seed alone, where
    Ray Train's `streaming_split` hands blocks to whichever worker asks first.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    resources = {"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage.join(absolute(run_uri), "ray"),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2), callbacks=callbacks or []),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise UnlearnError(f"Ray Train run {name!r} failed: {_root_cause(exc)}") from exc
    if result.error:
        raise UnlearnError(f"Ray Train run {name!r} failed: {_root_cause(result.error)}")
    return result.return_value


def _root_cause(exc: BaseException) -> str:
    """The last line of the innermost error message (a worker's DataError, say), not Ray's wrapping."""
    text = str(exc).strip().splitlines()
    for line in reversed(text):
        if "Error" in line and ":" in line:
            return line.strip()
    return text[-1] if text else type(exc).__name__


def absolute(uri: str) -> str:
    """Workers chdir into run folders, so local paths must be absolute before they reach them."""
    return uri if storage.is_s3(uri) else os.path.abspath(uri)
