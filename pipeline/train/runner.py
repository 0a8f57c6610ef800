"""Driver side: start Ray, launch a TorchTrainer over the worker loop, turn failures into clear errors."""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import posixpath
import re

import pyarrow.fs as pafs

from pipeline import storage
from pipeline.errors import ConfigError, StorageUnavailableError, UnlearnError
from pipeline.train.checkpoints import ATTEMPTS_DIR, event_name
from pipeline.train.console import log, verbose
from pipeline.train.loop import worker_loop
from pipeline.train.ray_address import ADDRESS_ENV, choose, started_line


def init_ray(num_workers: int = 1, cpus_per_worker: float = 1.0) -> None:
    """Join the Ray that --address / RAY_ADDRESS names (`ray job submit` sets it) or start a local one with spare
    CPUs (pipeline/train/ray_address.py), and say which in one line.

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
    choice = choose()
    if choice.address is not None:
        os.environ[ADDRESS_ENV] = choice.address  # `auto` resolved: processes started from here join the same Ray
        try:
            ray.init(address=choice.address, log_to_driver=True)
        except ConnectionError as exc:
            raise ConfigError(f"cannot reach the Ray at {choice.address} ({choice.source}): {exc}") from exc
    else:
        # Train V2 routes workers' prints through its logger and also prints them, so every progress
        # line would appear twice on a local console.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")  # not a line per pass over every set
        # Ray Train watches for node drains (spot preemption); one machine is never drained, and starting
        # the watcher printed a core_worker.cc error line at every fit.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        needed = int(num_workers * cpus_per_worker) + 2
        # address="local": a new Ray of our own, even where another one (a `ray start`, a test's Cluster) runs here;
        # connecting to that one by accident failed with "num_cpus ... must not be provided".
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, needed), include_dashboard=False,
                 object_store_memory=512 * 1024**2 if not os.environ.get("CI") else 256 * 1024**2,
                 logging_config=ray.LoggingConfig(log_level="INFO" if verbose() else "ERROR"))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    log(started_line(choice, ray.cluster_resources(), len(ray.nodes())))


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
    folder = run_folder(run_uri, name)
    trainer = TorchTrainer(
        loop,
        train_loop_config={**loop_config, "run_folder": folder},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage.join(absolute(run_uri), "ray"),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # Ray Train's INFO lines (worker group started, a report and a checkpoint per epoch and worker)
            # only with --verbose; its warnings and errors always, and everything in its log files.
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose() else "WARNING"),
            callbacks=[*(callbacks or []), _restart_log_class()(folder)]),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise fit_failure(name, exc) from exc
    if result.error:
        raise fit_failure(name, result.error)
    _delete_unregistered_checkpoints(folder, [checkpoint for checkpoint, _ in result.best_checkpoints or []])
    return result.return_value


def run_folder(run_uri: str, name: str) -> str:
    return storage.join(absolute(run_uri), "ray", name)


RESTARTS_DIR = "restarts"
# A worker error of the project's own kind (pipeline/errors.py) recurs on every retry: bad data, a diverged method.
# StorageUnavailableError is not one (storage that kept failing may answer again), nor is anything from Ray or torch.
PROJECT_ERROR = re.compile(r"\b(?:pipeline\.errors\.)?(?:UnlearnError|DataError|ConfigError|DivergedError)\b")
STORAGE_UNAVAILABLE = re.compile(r"\bStorageUnavailableError\b")


def fit_failure(name: str, error: BaseException) -> Exception:
    """The error a failed fit ends the command with, its root cause last: StorageUnavailableError when storage
    still failed after every restart --max-failures allowed (a rerun later resumes from the last checkpoint),
    else an UnlearnError (bad data, a diverged method, or workers lost more often than allowed)."""
    cause = _root_cause(error)
    kind = StorageUnavailableError if STORAGE_UNAVAILABLE.search(cause) else UnlearnError
    return kind(f"Ray Train run {name!r} failed: {cause}")


@functools.lru_cache(maxsize=None)
def _restart_log_class():
    """A Ray Train callback (it runs in the Train controller) that keeps a record of worker failures.

    A failure of the project's own kind ends the run at once, its message last, instead of a retry
    that would fail the same way (`--max-failures` is for lost workers and nodes, and for storage that
    kept failing through the SDK's retries: StorageUnavailableError). Any other failure is written to
    `<run folder>/restarts/` with its time, cause and the last epoch checkpointed before it (what the
    restarted workers resume after); `read_restarts` gives them to the record.
    Defined on first use: importing ray.train costs seconds, and bad input is refused before that.
    """
    from ray.train import UserCallback

    class RestartLog(UserCallback):
        def __init__(self, folder: str):
            self.folder, self.last_checkpoint_epoch = folder, None

        def after_report(self, run_context, metrics, checkpoint):
            if checkpoint is not None and metrics and "epoch" in metrics[0]:
                self.last_checkpoint_epoch = int(metrics[0]["epoch"])

        def after_exception(self, run_context, worker_exceptions):
            causes = sorted({worker_cause(error) for error in worker_exceptions.values()})
            own = [cause for cause in causes if PROJECT_ERROR.search(cause)]
            if own:  # in the controller: Ray Train ends the run without a retry. The whole line: a diverged
                raise UnlearnError(own[0])  # method's message ends with the settings to change
            now = dt.datetime.now(dt.timezone.utc)
            entry = {"time": now.isoformat(timespec="seconds"), "cause": "; ".join(map(_first_sentence, causes)),
                     "resumed_after_epoch": self.last_checkpoint_epoch}
            storage.write_text(storage.join(self.folder, RESTARTS_DIR, event_name(now)), json.dumps(entry))

    return RestartLog


RERUN_CAUSE = "rerun of the command"


def note_rerun(run_uri: str, name: str) -> None:
    """Before the fit of a command rerun to go on from an unfinished run: an entry in its restart log, whose epoch
    read_restarts fills from the attempt that followed (dropped when no worker ever started)."""
    now = dt.datetime.now(dt.timezone.utc)
    entry = {"time": now.isoformat(timespec="seconds"), "cause": RERUN_CAUSE, "resumed_after_epoch": None}
    storage.write_text(storage.join(run_folder(run_uri, name), RESTARTS_DIR, event_name(now)), json.dumps(entry))


def read_restarts(run_uri: str, name: str) -> list[dict]:
    """What made a run go on from a checkpoint, oldest first: {"time", "cause", "resumed_after_epoch"} each.

    Two logs make the story, merged in time order (their file names sort by time): the restarts (worker
    failures written by the Train controller, and reruns of the command, note_rerun) and the attempts (every
    start of the worker group, with the checkpoint its workers agreed to go on from, written by rank 0). The
    controller knows only the checkpoints Ray had registered when a worker was lost, so each restart takes the
    epoch of the attempt that followed it. A failure with no attempt after it before the next rerun ended its
    command and keeps the controller's epoch; a rerun note with no attempt after it (no worker started) is dropped.
    """
    folder = run_folder(run_uri, name)
    events = sorted([(posixpath.basename(uri), kind, json.loads(storage.read_text(uri)))
                     for kind, directory in (("restart", RESTARTS_DIR), ("attempt", ATTEMPTS_DIR))
                     for uri in storage.list_files(storage.join(folder, directory), ".json")],
                    key=lambda event: event[0])
    story, waiting = [], []
    for _, kind, entry in events:
        if kind == "attempt":
            for restart in waiting:
                restart["resumed_after_epoch"] = entry["resumed_after_epoch"]
            waiting = []
            continue
        if entry.get("cause") == RERUN_CAUSE:  # a new command: what waited belongs to one that ended
            story = [restart for restart in story if not _unanswered_rerun(restart, waiting)]
            waiting = []
        story.append(entry)
        waiting.append(entry)
    return [restart for restart in story if not _unanswered_rerun(restart, waiting)]


def _unanswered_rerun(restart: dict, waiting: list[dict]) -> bool:
    return restart.get("cause") == RERUN_CAUSE and any(restart is entry for entry in waiting)


def _delete_unregistered_checkpoints(folder: str, kept: list) -> None:
    """Remove checkpoint folders Ray Train never registered (uploaded just before a worker died): orphans that
    neither a resume nor Ray's `num_to_keep` clean-up would ever touch."""
    kept_names = {os.path.basename(str(checkpoint.path).rstrip("/")) for checkpoint in kept}
    fs, path = storage.resolve(folder)
    try:
        entries = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return
    for entry in entries:
        if entry.type == pafs.FileType.Directory and entry.base_name.startswith("checkpoint_") \
                and entry.base_name not in kept_names:
            storage.delete_tree(storage.join(folder, entry.base_name))


def worker_cause(error: BaseException) -> str:
    """A worker's error as one line; one of the project's own (pipeline/errors.py) named by its type.

    Ray Train hands the controller a worker's own exception, unwrapped from its traceback, whose text is only its
    message: a DivergedError read as "lotus diverged in epoch 1: ..." matched no project error and was retried
    (three attempts with --max-failures 2). Errors that pass through Ray (a failed Ray Data read task, a lost
    actor) carry a traceback or a text whose last line names their type already.
    """
    cause = _root_cause(error)
    if PROJECT_ERROR.search(cause) or STORAGE_UNAVAILABLE.search(cause):
        return cause
    # The project's class among the error's bases: Ray's RayTaskError(DataError) is a DataError too.
    own = next((kind for kind in type(error).__mro__ if kind.__module__ == UnlearnError.__module__), None)
    return f"{own.__module__}.{own.__name__}: {cause}" if own else cause


def _first_sentence(text: str, limit: int = 300) -> str:
    """Ray's death notices run to a paragraph of possible causes; the record keeps what happened."""
    return text.split(". ")[0].rstrip(".")[:limit]


def _root_cause(exc: BaseException | str) -> str:
    """The last line of the innermost error message (a worker's DataError, say), not Ray's wrapping."""
    text = str(exc).strip().splitlines()
    for line in reversed(text):
        if "Error" in line and ":" in line:
            return line.strip()
    return text[-1] if text else type(exc).__name__


def absolute(uri: str) -> str:
    """Workers chdir into run folders, so local paths must be absolute before they reach them."""
    return uri if storage.is_s3(uri) else os.path.abspath(uri)
