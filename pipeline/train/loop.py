"""The Ray Train worker loop: thin glue between Ray (shards, checkpoints, reports) and a method.

Everything the loop needs arrives in `config` (plain data): the method and its
settings, where the model comes from, which datasets exist, and where the final
model goes. The algorithm lives in `pipeline.methods`, the metrics in `pipeline.metrics`.
"""

from __future__ import annotations

import tempfile
import time
from typing import Callable

import torch

from pipeline import distributed, storage
from pipeline.errors import DivergedError, StorageUnavailableError
from pipeline.methods import create_method
from pipeline.distributed import unwrap
from pipeline.methods.accuracy import count_correct
from pipeline.methods.base import UnlearnData
from pipeline.models import ModelSpec, build_model, load_checkpoint, load_weights, save_checkpoint
from pipeline.train.checkpoints import (keep_finished_run, note_attempt, read_finished_run, read_resume_state,
                                        write_epoch_checkpoint)
from pipeline.train.console import quiet_worker_reports
from pipeline.train.ray_sources import DEFAULT_CACHE_MB, InputStats, worker_sources, warm_up_data_workers


def load_model(config: dict) -> tuple[torch.nn.Module, ModelSpec]:
    """The starting model: a project checkpoint (`model_uri`), or a fresh one built from `model_spec` (+ weights)."""
    if config.get("model_uri"):
        model, spec, _ = load_checkpoint(config["model_uri"])
        return model, spec
    spec = ModelSpec(**config["model_spec"])
    torch.manual_seed(config.get("seed", 0))
    model = build_model(spec)
    if config.get("weights"):
        load_weights(model, config["weights"])
    return model, spec


def _place(model: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _checkpoint_reporter(spec: ModelSpec, method, stats: InputStats, epoch_metrics=None,
                         history: list[dict] | None = None):
    """on_epoch_end callback: every rank reports (a barrier); rank 0 attaches the checkpoint.

    `epoch_metrics(model)` (sweeps) adds an evaluation to every epoch's report, so a Tune
    scheduler such as ASHA can stop a trial between epochs. `history` (the epochs of the checkpoint a run
    resumed from) grows by every epoch's entry and goes into each checkpoint, so that the record of a run
    resumed after a restart holds every epoch, not only the last attempt's.
    """
    import ray.train

    history = list(history or [])

    def report(epoch: int, model, entry: dict) -> None:
        history.append(dict(entry))
        if epoch_metrics is not None:
            with stats.uncounted():  # its time is not the method's either (MethodReport.epoch_report_seconds)
                entry = {**entry, **scalars(epoch_metrics(model))}
        method_states = distributed.all_gather_objects(method.resume_state())
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if ray.train.get_context().get_world_rank() == 0:
                write_epoch_checkpoint(directory, model, spec, epoch, method.optimizer, method_states, history)
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report({**entry, "epoch": epoch}, checkpoint=checkpoint)

    return report


def scalars(metrics: dict) -> dict:
    """The numeric entries of a metrics dict (what Tune schedulers and searchers can compare)."""
    return {key: value for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def _resume_state(run_folder: str | None, device) -> dict | None:
    """The newest epoch checkpoint of this run that every rank reads, or None (every rank) for a fresh start.

    Not just Ray Train's `get_checkpoint()`: Ray registers a reported checkpoint a poll later, so a
    worker lost right after reporting epoch 2 was restarted from epoch 1. The run folder holds every
    checkpoint written; the newest that loads is the one to go on from (a half-written one does not load).
    Every rank must take the same one (agreed_resume): a rank that fell back alone to an older checkpoint
    after a transient read error would train other epochs than the rest.
    """
    import ray.train

    candidates = newest_first(run_folder) if run_folder else []
    registered = ray.train.get_checkpoint()
    candidates += [registered] if registered is not None else []

    def read(checkpoint) -> dict:
        def download_and_load() -> dict:
            with checkpoint.as_directory() as directory:
                return read_resume_state(directory, distributed.rank())

        # Tried again on a transient storage error; one that outlasts the tries is StorageUnavailableError.
        return storage.retrying("read the epoch checkpoint", str(checkpoint.path), download_and_load)

    def reduce_max(values: list[float]) -> list[float]:
        return distributed.all_reduce_max(torch.tensor(values, dtype=torch.float64, device=device)).tolist()

    return agreed_resume(candidates, read, reduce_max)


def agreed_resume(candidates: list, read: Callable[[object], dict],
                  reduce_max: Callable[[list[float]], list[float]]) -> dict | None:
    """The first of `candidates` (newest first) that every rank read, as the same epoch; None when there is none.

    `read(candidate)` returns a resume state ({"epoch", ...}) or raises: a checkpoint that does not load
    (the worker died while it was being written) is skipped by every rank, so all resume from the same epoch or
    all start afresh; storage that stays unavailable (StorageUnavailableError) on any rank stops every rank
    together, so that Ray Train restarts the worker group (--max-failures) rather than going on from an older
    epoch than the storage holds. `reduce_max` is the element-wise maximum over ranks (a collective: every rank
    calls it the same number of times, so lists of unequal length are padded with failures).
    """
    (count,) = reduce_max([float(len(candidates))])
    for index in range(int(count)):
        state, unavailable = None, None
        if index < len(candidates):
            try:
                state = read(candidates[index])
            except StorageUnavailableError as exc:
                unavailable = exc
            except Exception:  # incomplete: the other ranks must not take it either
                state = None
        epoch = float(state["epoch"]) if state is not None else 0.0
        failed, down, highest, minus_lowest = reduce_max([0.0 if state is not None else 1.0,
                                                          1.0 if unavailable else 0.0, epoch, -epoch])
        if down:
            raise unavailable or StorageUnavailableError(
                "another worker could not read the run's epoch checkpoint (storage unavailable): every worker "
                "stops, so that none goes on from another epoch")
        if failed == 0.0 and highest == -minus_lowest:
            return state
    return None


def newest_first(run_folder: str) -> list:
    """The run folder's checkpoint folders as Ray Train Checkpoints, newest first (their names hold the time)."""
    import pyarrow.fs as pafs
    import ray.train

    fs, path = storage.resolve(run_folder)
    # A listing that fails here alone would leave this rank other candidates than the rest: tried again when the
    # failure may pass, then raised (Ray Train restarts the worker group), never taken as "no checkpoint".
    entries = storage.retrying("list the checkpoints of", run_folder,
                               lambda: fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))
    folders = sorted((e.path for e in entries if e.type == pafs.FileType.Directory
                      and e.base_name.startswith("checkpoint_")), reverse=True)
    return [ray.train.Checkpoint(path=folder, filesystem=fs) for folder in folders]


def split_accuracies(model, sources: dict, device, batch_size: int = 256) -> dict[str, float]:
    """Accuracy on each named source, all-reduced across workers (every worker takes part)."""
    out = {}
    for name, source in sources.items():
        correct, total = count_correct(model, source, device, batch_size)
        out[name] = correct / total if total else None
    return out


def worker_loop(config: dict):
    """Run one method (training is the `retrain` method) on this worker's shards, then evaluate.

    With `config["runs"]` (a list of per-run settings: method, method_config, roles, model_out), the
    runs go one after another in the same worker group, each from the starting model: a benchmark
    pays Ray's start-up once, not once per method. Such runs keep no epoch checkpoints, but each finished run is
    kept: a worker group restarted after a lost node goes on with the run that was in progress.
    """
    import ray
    import ray.train.torch

    quiet_worker_reports()
    device = ray.train.torch.get_device()
    plan = config["data_plan"]
    if plan.mode == "stream":
        # Read tasks run in fresh Ray worker processes that import torch first (seconds on a small machine):
        # a start-up cost, paid here rather than inside the first method's timed first pass.
        ray.get(warm_up_data_workers())
    sources, stats = worker_sources(plan, float(config.get("cache_mb", DEFAULT_CACHE_MB)), device)
    evaluator = WorkerEvaluator(sources, device)
    try:
        if "runs" not in config:
            return _run_one(config, sources, stats, device, evaluator, checkpointing=True)
        return [_kept_or_run(config, position, run, sources, stats, device, evaluator)
                for position, run in enumerate(config["runs"])]
    finally:
        for source in sources.values():
            source.close()


def _kept_or_run(config: dict, position: int, run: dict, sources: dict, stats: InputStats, device,
                 evaluator: WorkerEvaluator) -> dict:
    """A run of a multi-run fit: its result kept by an earlier attempt of this fit (the worker group restarted after
    a lost node), or run now and kept. Every rank takes the kept result only if every rank found it: the ranks' runs
    pair up in collectives, so they must all run, or all skip, the same runs."""
    import ray.train

    folder = config.get("run_folder")
    kept = read_finished_run(folder, position, run["method"], run.get("model_out")) if folder else None
    found = distributed.all_reduce_sum(torch.tensor([1.0 if kept is not None else 0.0], device=device))
    if int(found.item()) == distributed.world_size():
        print(f"[{run['method']}] finished before the worker group restarted: kept, not run again")
        return kept
    result = _run_or_fail({**config, **run}, sources, stats, device, evaluator)
    if folder and ray.train.get_context().get_world_rank() == 0:
        keep_finished_run(folder, position, run["method"], result)
    return result


def _run_or_fail(config: dict, sources: dict, stats: InputStats, device, evaluator: WorkerEvaluator) -> dict:
    """One of several runs in a fit: a diverged method fails its own run (recorded as failed), not the others'.
    Every worker sees the divergence (the weights are the same on all), so all return here together."""
    try:
        return _run_one(config, sources, stats, device, evaluator, checkpointing=False)
    except DivergedError as exc:
        return {"failed": str(exc)}


def _images_since(stats: InputStats, before: InputStats, device) -> tuple[int, float]:
    """(images all workers read since `before`, seconds this worker waited for them)."""
    images = distributed.all_reduce_sum(torch.tensor([float(stats.images - before.images)], device=device))
    return int(images.item()), stats.wait_seconds - before.wait_seconds


def _run_one(config: dict, sources: dict, stats: InputStats, device, evaluator: WorkerEvaluator,
             checkpointing: bool) -> dict:
    import ray.train
    import ray.train.torch

    model, spec = load_model(config)
    reference_uri = config.get("original_uri") or config.get("model_uri")
    original = _place(load_checkpoint(reference_uri)[0], device, False) if reference_uri else None
    model = _place(model, device, config.get("channels_last", False))
    if distributed.world_size() > 1:
        model = ray.train.torch.prepare_model(model, move_to_device=False)

    roles = config["roles"]  # which dataset plays which part for the method
    data = UnlearnData(forget=sources[roles["forget"]], retain=sources[roles["retain"]],
                       mixed=sources.get(roles.get("mixed", "")), unseen=sources.get(roles.get("unseen", "")),
                       num_classes=spec.num_classes, forget_classes=tuple(config.get("forget_classes", ())))
    # Every method starts from the seed's random state, as it would alone: in a fit that runs several, what
    # ran before it must not shift its draws (LoTUS's Gumbel noise varied from one bench run to the next).
    torch.manual_seed(config.get("seed", 0))
    method = create_method(config["method"], config.get("method_config"), seed=config.get("seed", 0))
    epoch_metrics = None
    if config.get("evaluate_every_epoch"):
        def epoch_metrics(current):
            return evaluator(config, current, original)
    resume = _resume_state(config.get("run_folder"), device) if checkpointing else None
    resumed_history = list(resume["history"]) if resume else []
    if checkpointing and config.get("run_folder") and ray.train.get_context().get_world_rank() == 0:
        note_attempt(config["run_folder"], resume["epoch"] if resume else None)  # read_restarts tells the story
    on_epoch_end = (_checkpoint_reporter(spec, method, stats, epoch_metrics, resumed_history)
                    if checkpointing else None)
    before = InputStats(stats.images, stats.wait_seconds)
    report = method.unlearn(model, original, data, device, on_epoch_end=on_epoch_end, resume=resume)
    unlearn_images, unlearn_wait = _images_since(stats, before, device)

    before = InputStats(stats.images, stats.wait_seconds)
    eval_started = time.perf_counter()
    evaluation = evaluator(config, model, original)
    eval_seconds = time.perf_counter() - eval_started
    eval_images, eval_wait = _images_since(stats, before, device)
    sha256 = None
    if config.get("model_out") and ray.train.get_context().get_world_rank() == 0:
        sha256 = save_checkpoint(unwrap(model), spec, config["model_out"],
                                 extra={"method": config["method"], "seed": config.get("seed", 0)})
    return {"unlearn_seconds": report.unlearn_seconds, "epoch_report_seconds": report.epoch_report_seconds,
            "epochs_run": report.epochs_run, "history": [*resumed_history, *report.history],
            "evaluation": evaluation, "eval_seconds": eval_seconds, "checkpoint_sha256": sha256,
            "resumed_after_epoch": resume["epoch"] if resume else None,
            "images": {"unlearn": unlearn_images, "eval": eval_images},
            "input_wait": {"unlearn": unlearn_wait, "eval": eval_wait}}


class WorkerEvaluator:
    """Evaluates on this worker's shards of the sets named in `config["evaluate"]` ({split: dataset name}).

    "accuracy" (training runs): accuracy per set. "metrics" (unlearning runs): one pass per model per
    split for accuracies, MIA, RF-JSD, and JSD / Avg Gap when a gold model is given. The reference
    models (the original, the gold model) are frozen checkpoints, so their statistics are computed once
    per worker and reused by every later evaluation against the same checkpoints: a sweep's per-epoch
    evaluations and the per-method evaluations of a benchmark fit then run only the model being
    evaluated (and the gold model on D_f, for per-sample JSD), about half the forward passes.
    """

    REFERENCE_ROLES = ("original", "gold")

    def __init__(self, sources: dict, device):
        self.sources, self.device = sources, device
        self.gold_models: dict[str, torch.nn.Module] = {}
        self.reference_stats: dict[tuple, dict] = {}  # (original uri, gold uri, evaluate map) -> {(role, split): stats}
        self.floors: dict[tuple, object] = {}  # (original uri, seed, draws) -> RfJsdFloor: the original's, frozen too

    def __call__(self, config: dict, model, original) -> dict:
        named = {label: self.sources[name] for label, name in config.get("evaluate", {}).items()}
        if config.get("evaluation", "accuracy") == "accuracy":
            return split_accuracies(unwrap(model), named, self.device)
        from pipeline.metrics.evaluate import evaluate
        from pipeline.metrics.summary import summarize

        models = {"unlearned": unwrap(model), "original": original}
        gold_uri = config.get("gold_uri")
        if gold_uri:
            if gold_uri not in self.gold_models:
                self.gold_models[gold_uri] = _place(load_checkpoint(gold_uri)[0], self.device, False)
            models["gold"] = self.gold_models[gold_uri]
        key = (config.get("original_uri") or config.get("model_uri"), gold_uri,
               tuple(sorted(config.get("evaluate", {}).items())))
        result = evaluate(models, named, self.device, num_classes=config["num_classes"],
                          batch_size=int(config.get("eval_batch_size", 256)), reuse=self.reference_stats.get(key))
        self.reference_stats[key] = {(role, split): stats for (role, split), stats in result.split_stats.items()
                                     if role in self.REFERENCE_ROLES}
        summary = summarize(result, seed=config.get("seed", 0))
        if config.get("floor_plan") is not None:
            summary.update(self._floor(config, key[0], original, named, result))
        return summary

    def _floor(self, config: dict, original_uri: str, original, named: dict, result) -> dict:
        """RF-JSD's sampling floor (pipeline/metrics/floor.py) for `config["floor_plan"]`, once per worker."""
        from pipeline.metrics.floor import floor_metrics, original_floor

        plan = config["floor_plan"]
        unseen = result.stats("original", "unseen")
        if "test" not in named or unseen is None:
            return floor_metrics(None)
        key = (original_uri, config.get("seed", 0), plan.draws)
        if key not in self.floors:
            self.floors[key] = original_floor(original, named["test"], plan, unseen.class_prob_sums,
                                              unseen.class_counts, self.device,
                                              int(config.get("eval_batch_size", 256)))
        return floor_metrics(self.floors[key])
