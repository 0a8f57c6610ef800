"""Unlearning runs: the methods of a RunSpec through Ray Data + Ray Train, evaluated, one record each."""

from __future__ import annotations

import contextlib

from pipeline import storage
from pipeline.data.splits import Splits, make_splits
from pipeline.methods import create_method
from pipeline.models import load_checkpoint
from pipeline.results.records import ResultRecord, append_record, load_records, new_run_id
from pipeline.runs.common import (Phases, check_model_fits_data, check_output_uri, log_restarts, open_dataset,
                                  plan_floor, use_endpoint, versions)
from pipeline.runs.identity import begin_run, marking_divergence, remember_identity, with_data_removals
from pipeline.runs.spec import MethodRun, RunSpec
from pipeline.train.console import log
from pipeline.train.datasets import plan_sets, subset_name
from pipeline.train.runner import absolute, init_ray, read_restarts, run_trainer

EVALUATE = {"forget": "forget", "retain": "retain_all", "test": "test", "unseen": "unseen"}


def method_settings(method: str, settings: dict | None = None) -> dict:
    """The method's resolved settings, its defaults under `settings`; an unknown key is a ConfigError."""
    return dict(create_method(method, settings or {}, log=None).config)


def unlearn(spec: RunSpec, tune_callbacks: list | None = None, record_kind: str = "unlearn",
            splits: Splits | None = None) -> list[ResultRecord]:
    """Run the spec's methods one after another in one Ray Train fit (one start-up), one record each.

    With `tune_callbacks` (a Tune trial) every epoch is evaluated and reported, so a scheduler can stop the
    trial early. A single run resumes when rerun with the same name and identity; an identical finished run
    returns its record. `splits` replaces the sets of the forget spec (a deletion request that excludes
    earlier requests from D_r).
    """
    spec.check()
    use_endpoint(spec.data.s3_endpoint)
    check_output_uri(spec.out)
    phases = Phases()
    resolved = [method_settings(run.method, run.settings) for run in spec.runs]
    meta, index = open_dataset(spec.data)
    splits = splits or make_splits(index, spec.forget, spec.seed, meta.num_classes)
    _, model_spec, _ = load_checkpoint(spec.original)
    check_model_fits_data(model_spec, meta, spec.original, spec.data.uri)
    floor_plan = plan_floor(index, splits, meta.num_classes, spec.floor_draws, spec.seed)
    names = [spec.name] if spec.single and spec.name else [f"{run.name}-s{spec.seed}" for run in spec.runs]
    if spec.single:
        identity = with_data_removals(spec.identity(resolved[0], model_spec.name), meta)
        finished = begin_run(spec.out, names[0], identity, spec.overwrite, spec.ray.workers)
        if finished:
            log(f"run {names[0]!r} under {spec.out} is complete (record {finished}); nothing to do")
            return [record for record in load_records(spec.out) if record.run_id == finished]
    init_ray(spec.ray.workers, spec.ray.cpus_per_worker)
    phases.lap("startup")

    fractions = [float(settings.get("retain_fraction", 1.0)) for settings in resolved]
    needed = sorted({name for fraction in fractions for name in _roles(fraction).values()} | set(EVALUATE.values()))
    plan = plan_sets(spec.data.uri, meta, splits, needed, model_spec.image_size, fractions, spec.data.mode)
    run_settings = [_worker_run(spec, run, settings, fraction, name)
                    for run, settings, fraction, name in zip(spec.runs, resolved, fractions, names)]
    loop_config = {
        "seed": spec.seed, "original_uri": absolute(spec.original),
        "gold_uri": absolute(spec.gold) if spec.gold else None,
        "data_plan": plan, "cache_mb": spec.data.cache_mb,
        "evaluate": EVALUATE, "evaluation": "metrics",
        "num_classes": meta.num_classes, "forget_classes": list(splits.forget_classes),
        "channels_last": spec.ray.channels_last, "evaluate_every_epoch": bool(tune_callbacks), "floor_plan": floor_plan,
        **(run_settings[0] if spec.single else {"runs": run_settings}),
    }
    phases.lap("data")
    log(f"{', '.join(run.name for run in spec.runs)} on {meta.name} ({spec.forget}, seed {spec.seed}): "
        f"{dict(splits.counts)}")
    fit_name = names[0] if spec.single else f"methods-s{spec.seed}-{new_run_id('fit', 'many', spec.seed)[-8:]}"
    # A single run that diverged must not block the rerun with a lower lr its error message asks for.
    with marking_divergence(spec.out, fit_name) if spec.single else contextlib.nullcontext():
        results = run_trainer(loop_config, spec.out, name=fit_name, workers=spec.ray.workers, use_gpu=spec.ray.gpus,
                              cpus_per_worker=spec.ray.cpus_per_worker, max_failures=spec.ray.max_failures,
                              callbacks=tune_callbacks)
    results = [results] if spec.single else results
    phases.lap("run")
    restarts = read_restarts(spec.out, fit_name)
    log_restarts(restarts)
    shared = phases.total()
    # The workers timed each method (barriers at both ends), its per-epoch checkpoints and reports, and each
    # evaluation; the rest of the fit's wall time is Ray start-up and streaming set-up, shared by its runs.
    overhead = max(0.0, shared.pop("run") - sum(_worker_seconds(r) for r in results if "failed" not in r))
    records = []
    for run, settings, worker_run, result in zip(spec.runs, resolved, run_settings, results):
        if "failed" in result:
            records.append(_failed_record(spec, record_kind, run, settings, meta.name, model_spec.name,
                                          result["failed"]))
            continue
        seconds = {**shared, "startup": shared["startup"] + overhead, "unlearn": result["unlearn_seconds"],
                   "epoch_reports": result["epoch_report_seconds"], "eval": result["eval_seconds"]}
        record = ResultRecord(
            run_id=new_run_id(record_kind, run.name, spec.seed), kind=record_kind, method=run.name,
            dataset=meta.name, model=model_spec.name, seed=spec.seed, forget_spec=spec.forget,
            config={run.method: settings, "data": spec.data.uri, "original": spec.original, "gold": spec.gold,
                    "workers": spec.ray.workers, "gpus": spec.ray.gpus, "epochs_run": result["epochs_run"],
                    "history": result["history"], "restarts": restarts},
            metrics=result["evaluation"], phases=seconds, unlearn_seconds=result["unlearn_seconds"],
            images={"data": plan.stored_rows, **result["images"]}, input_wait=result["input_wait"],
            workers=spec.ray.workers, gpus=spec.ray.workers if spec.ray.gpus else 0, versions=versions(),
            checkpoint_uri=worker_run["model_out"] or run.model_uri, checkpoint_sha256=result["checkpoint_sha256"],
            notes="" if spec.single else f"one of {len(spec.runs)} runs sharing one Ray Train fit (start-up and data shared)")
        record = run.finalize(record) if run.finalize else record
        append_record(spec.out, record)
        if spec.single:  # marks the run finished: an identical rerun returns this record instead of a 0-epoch one
            remember_identity(spec.out, names[0], identity, record.run_id, spec.ray.workers)
        print_metrics(run.name, record.metrics, record.unlearn_seconds)
        records.append(record)
    log(f"unlearned model(s) and records under {spec.out}")
    return records


def _worker_run(spec: RunSpec, run: MethodRun, settings: dict, fraction: float, name: str) -> dict:
    """What the worker loop needs of one method run."""
    model_out = run.model_out or (None if run.model_uri else storage.join(absolute(spec.out), f"{name}.pt"))
    return {"method": run.method, "method_config": settings, "roles": _roles(fraction),
            "model_uri": absolute(run.model_uri or spec.original), "model_out": model_out}


def _roles(retain_fraction: float) -> dict:
    """Dataset names playing each part; a retain fraction below 1 reads its own seeded subset of D_r."""
    return {"forget": "forget", "retain": subset_name("retain_all" if retain_fraction >= 1 else "retain", retain_fraction),
            "mixed": subset_name("mixed", retain_fraction), "unseen": "unseen"}


def _failed_record(spec: RunSpec, kind: str, run: MethodRun, settings: dict, dataset: str, model: str,
                   error: str) -> ResultRecord:
    """A run of a multi-method fit that failed (a diverged method): recorded as failed, with no model or metrics."""
    record = ResultRecord(run_id=new_run_id(kind, run.name, spec.seed), kind=kind, method=run.name, dataset=dataset,
                          model=model, seed=spec.seed, forget_spec=spec.forget,
                          config={run.method: settings, "data": spec.data.uri, "original": spec.original},
                          workers=spec.ray.workers, versions=versions(), status="failed", error=error)
    append_record(spec.out, record)
    log(f"[{run.name}] FAILED: {error}")
    return record


def _worker_seconds(result: dict) -> float:
    return result["unlearn_seconds"] + result["epoch_report_seconds"] + result["eval_seconds"]


def print_metrics(label: str, metrics: dict, seconds: float | None = None) -> None:
    def show(key, scale=1.0):
        value = metrics.get(key)
        return "—" if value is None else f"{value * scale:.4f}" if scale == 1.0 else f"{value * scale:.2f}"

    timing = f"  time {seconds:.1f} s" if seconds is not None else ""
    floor = ""
    if metrics.get("rf_jsd_floor") is not None:  # what a model that never saw D_f scores by sampling alone
        floor = f" floor x1e4 {metrics['rf_jsd_floor_e4']:.2f} ± {metrics['rf_jsd_floor_std_e4']:.2f}"
    log(f"[{label}] Acc_f {show('acc_forget')}  Acc_r {show('acc_retain')}  Acc_test {show('acc_test')}  "
        f"MIA {show('mia')}  Avg Gap {show('avg_gap')}  JSD {show('jsd')} (x1e4 {show('jsd', 1e4)})  "
        f"RF-JSD {show('rf_jsd')} (x1e4 {show('rf_jsd', 1e4)}){floor}{timing}")
