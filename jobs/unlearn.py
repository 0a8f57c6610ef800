"""`unlearn run`: make a trained model forget a forget set with LoTUS or a baseline, through Ray Data + Ray Train,
then evaluate it (accuracies, MIA, RF-JSD and its sampling floor; JSD and Avg Gap with --gold) and append a
result record to --out."""

from __future__ import annotations

import argparse
import json
import sys

from jobs.common import (Phases, add_data_flags, add_floor_flag, add_mlflow_flag, add_ray_flags, apply_endpoint,
                         check_model_fits_data, track,
                         check_run_arguments, log, open_dataset, plan_floor, run_main, versions)
from pipeline import storage
from pipeline.config import parse_overrides
from pipeline.data.splits import Splits, make_splits
from pipeline.errors import ConfigError
from pipeline.methods import REGISTRY, create_method
from pipeline.models import load_checkpoint
from pipeline.results.records import ResultRecord, append_record, load_records, new_run_id
from pipeline.train.datasets import plan_sets, subset_name
from pipeline.train.runner import absolute, init_ray, read_restarts, run_trainer

EVALUATE = {"forget": "forget", "retain": "retain_all", "test": "test", "unseen": "unseen"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn run", description=__doc__)
    add_data_flags(p)
    add_ray_flags(p)
    p.add_argument("--original", required=True, help="checkpoint of the trained model (local or s3://)")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(REGISTRY)}")
    p.add_argument("--forget", default="random:0.1", help="random:F | class:C1,C2 | ids:FILE | limited:F/R")
    p.add_argument("--seed", type=int, default=3407)
    p.add_argument("--gold", help="retrained model checkpoint: adds JSD and Avg Gap")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="method settings, e.g. --set lotus.alpha=2 --set lotus.lr=1e-4")
    p.add_argument("--out", required=True, help="run URI: unlearned checkpoint, epoch checkpoints, result records")
    p.add_argument("--name", help="run name (default: METHOD-sSEED); a rerun with the same name and settings resumes")
    add_mlflow_flag(p)
    p.add_argument("--overwrite", action="store_true",
                   help="start this run afresh even if --out holds a run of the same name with other settings")
    add_floor_flag(p)
    return p


def method_settings(method: str, pairs: list[str], base: dict | None = None) -> dict:
    """The method's resolved settings: its defaults, then a config file's, then --set overrides."""
    overrides = parse_overrides(pairs)
    unknown = sorted(set(overrides) - {method})
    if unknown:
        raise ConfigError(f"--set names method(s) {unknown} but this run is {method!r}")
    settings = {**(base or {}), **overrides.get(method, {})}
    resolved = create_method(method, settings, log=None).config  # validates the keys
    return {key: value for key, value in resolved.items()}


RUN_SPEC_FILE = "run_spec.json"


def run_spec(args: argparse.Namespace, method: str, settings: dict, model_name: str) -> dict:
    """What makes a run this run: a checkpoint may only be resumed into a run with the same spec."""
    spec = {"data": absolute(args.data), "forget": args.forget, "seed": args.seed, "method": method,
            "settings": settings, "original": absolute(args.original), "model": model_name,
            "gold": absolute(args.gold) if args.gold else None}
    return json.loads(json.dumps(spec))  # as it reads back from the file (tuples become lists)


def _spec_uri(out: str, name: str) -> str:
    return storage.join(absolute(out), "ray", name, RUN_SPEC_FILE)


def check_rerun(out: str, name: str, spec: dict, overwrite: bool) -> str | None:
    """Before a single run: None to (re)start it, or the run_id of an identical run that already finished.

    Ray Train resumes any run of the same name from its last checkpoint, whatever the settings: a rerun
    with lotus.alpha=2 once resumed a finished alpha=8 run and recorded alpha=2. A run of that name with
    another spec is refused (naming what differs) unless `overwrite`, which deletes it first.
    """
    uri = _spec_uri(out, name)
    if not storage.exists(uri):
        return None
    stored = json.loads(storage.read_text(uri))
    earlier = {key: value for key, value in stored.items() if key != "record"}
    if earlier == spec:
        return stored.get("record")
    if overwrite:
        storage.delete_tree(storage.join(absolute(out), "ray", name))
        return None
    raise ConfigError(f"{out} already holds run {name!r} with other settings ({_differences(earlier, spec)}); "
                      f"use another --out or --name, or --overwrite to start it afresh")


def _differences(before: dict, now: dict) -> str:
    flat_before, flat_now = _flatten(before), _flatten(now)
    keys = sorted(set(flat_before) | set(flat_now))
    return "; ".join(f"{key}: {flat_before.get(key)} there, {flat_now.get(key)} now"
                     for key in keys if flat_before.get(key) != flat_now.get(key))


def _flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _roles(retain_fraction: float) -> dict:
    """Dataset names playing each part; a retain fraction below 1 reads its own seeded subset of D_r."""
    return {"forget": "forget", "retain": subset_name("retain_all" if retain_fraction >= 1 else "retain", retain_fraction),
            "mixed": subset_name("mixed", retain_fraction), "unseen": "unseen"}


def unlearn(args: argparse.Namespace, method_config: dict | None = None, tune_callbacks: list | None = None,
            record_kind: str = "unlearn") -> ResultRecord:
    """Run one method through Ray Train and record it. With `tune_callbacks` (a Tune trial), every epoch is
    evaluated and reported, so a scheduler can stop the trial early. A rerun with the same name resumes."""
    return unlearn_many(args, [(args.method, method_config)], tune_callbacks, record_kind)[0]


def unlearn_many(args: argparse.Namespace, runs: list[tuple], tune_callbacks: list | None = None,
                 record_kind: str = "unlearn", splits: Splits | None = None) -> list[ResultRecord]:
    """Run methods one after another in one Ray Train fit (one start-up), one record each.

    `runs` holds (method, settings) pairs, or (method, settings, row) where `row` may name the record's
    method (`label`), a starting model other than --original (`model_uri`), and a `finalize(record)`
    that returns the record to store: the benchmark evaluates its gold model as the `retrain` row this
    way, as the `original` method started from the gold model. Such a row saves no checkpoint copy; a row's
    `model_out` puts the unlearned model elsewhere than --out/NAME.pt.
    A single run keeps per-epoch checkpoints and resumes; several runs in one fit do not.
    `splits` replaces the sets of --forget (a deletion request that excludes earlier requests from D_r).
    """
    apply_endpoint(args)
    check_run_arguments(args)
    phases = Phases()
    rows = [run[2] if len(run) > 2 else {} for run in runs]
    resolved = [(method, method_settings(method, args.set if method == args.method else [], config))
                for method, config, *_ in runs]
    meta, index = open_dataset(args)
    splits = splits or make_splits(index, args.forget, args.seed, meta.num_classes)
    _, spec, _ = load_checkpoint(args.original)
    check_model_fits_data(spec, meta, args.original, args.data)
    floor_plan = plan_floor(index, splits, meta.num_classes, getattr(args, "floor_draws", None), args.seed)
    single = len(resolved) == 1
    labels = [row.get("label", method) for (method, _), row in zip(resolved, rows)]
    names = [f"{label}-s{args.seed}" for label in labels]
    if single and args.name:
        names = [args.name]
    if single:
        spec_of_run = run_spec(args, *resolved[0], spec.name)
        finished = check_rerun(args.out, names[0], spec_of_run, getattr(args, "overwrite", False))
        if finished:
            log(f"run {names[0]!r} under {args.out} is complete (record {finished}); nothing to do")
            return [record for record in load_records(args.out) if record.run_id == finished]
        storage.write_text(_spec_uri(args.out, names[0]), json.dumps(spec_of_run, indent=2))
    init_ray(args.workers, args.cpus_per_worker)
    phases.lap("startup")

    fractions = [float(config.get("retain_fraction", 1.0)) for _, config in resolved]
    needed = sorted({name for fraction in fractions for name in _roles(fraction).values()} | set(EVALUATE.values()))
    plan = plan_sets(args.data, meta, splits, needed, spec.image_size, fractions, args.data_mode)
    run_settings = [{"method": method, "method_config": config, "roles": _roles(fraction),
                     "model_uri": absolute(row.get("model_uri", args.original)),
                     "model_out": row.get("model_out") or (None if "model_uri" in row
                                                           else storage.join(absolute(args.out), f"{name}.pt"))}
                    for (method, config), fraction, name, row in zip(resolved, fractions, names, rows)]
    loop_config = {
        "seed": args.seed, "original_uri": absolute(args.original),
        "gold_uri": absolute(args.gold) if args.gold else None,
        "data_plan": plan, "cache_mb": args.cache_mb,
        "evaluate": EVALUATE, "evaluation": "metrics",
        "num_classes": meta.num_classes, "forget_classes": list(splits.forget_classes),
        "channels_last": args.channels_last, "evaluate_every_epoch": bool(tune_callbacks), "floor_plan": floor_plan,
        **(run_settings[0] if single else {"runs": run_settings}),
    }
    phases.lap("data")
    log(f"{', '.join(labels)} on {meta.name} ({args.forget}, seed {args.seed}): {dict(splits.counts)}")
    fit_name = names[0] if single else f"methods-s{args.seed}-{new_run_id('fit', 'many', args.seed)[-8:]}"
    results = run_trainer(loop_config, args.out, name=fit_name, workers=args.workers, use_gpu=args.gpus,
                          cpus_per_worker=args.cpus_per_worker, max_failures=args.max_failures,
                          callbacks=tune_callbacks)
    results = [results] if single else results
    phases.lap("run")
    restarts = read_restarts(args.out, fit_name, results[0].get("resumed_after_epoch") if single else None)
    for restart in restarts:
        log(f"restarted at {restart['time']} after epoch {restart['resumed_after_epoch']}: {restart['cause']}")
    shared = phases.total()
    # The workers timed each method (barriers at both ends), its per-epoch checkpoints and reports, and each
    # evaluation; the rest of the fit's wall time is Ray start-up and streaming set-up, shared by its runs.
    overhead = max(0.0, shared.pop("run") - sum(_worker_seconds(r) for r in results if "failed" not in r))
    records = []
    for (method, config), label, row, settings, result in zip(resolved, labels, rows, run_settings, results):
        if "failed" in result:
            records.append(_failed_record(args, record_kind, label, method, config, meta.name, spec.name,
                                          result["failed"]))
            continue
        seconds = {**shared, "startup": shared["startup"] + overhead, "unlearn": result["unlearn_seconds"],
                   "epoch_reports": result["epoch_report_seconds"], "eval": result["eval_seconds"]}
        record = ResultRecord(
            run_id=new_run_id(record_kind, label, args.seed), kind=record_kind, method=label, dataset=meta.name,
            model=spec.name, seed=args.seed, forget_spec=args.forget,
            config={method: config, "data": args.data, "original": args.original, "gold": args.gold,
                    "workers": args.workers, "gpus": args.gpus, "epochs_run": result["epochs_run"],
                    "history": result["history"], "restarts": restarts},
            metrics=result["evaluation"], phases=seconds, unlearn_seconds=result["unlearn_seconds"],
            images={"data": plan.stored_rows, **result["images"]}, input_wait=result["input_wait"],
            workers=args.workers, gpus=args.workers if args.gpus else 0, versions=versions(),
            checkpoint_uri=settings["model_out"] or row.get("model_uri"), checkpoint_sha256=result["checkpoint_sha256"],
            notes="" if single else f"one of {len(resolved)} runs sharing one Ray Train fit (start-up and data shared)")
        record = row["finalize"](record) if "finalize" in row else record
        append_record(args.out, record)
        if single:  # marks the run finished: an identical rerun returns this record instead of a 0-epoch one
            storage.write_text(_spec_uri(args.out, names[0]), json.dumps({**spec_of_run, "record": record.run_id}))
        print_metrics(label, record.metrics, record.unlearn_seconds)
        records.append(record)
    log(f"unlearned model(s) and records under {args.out}")
    return records


def _failed_record(args, kind: str, label: str, method: str, config: dict, dataset: str, model: str,
                   error: str) -> ResultRecord:
    """A run of a multi-method fit that failed (a diverged method): recorded as failed, with no model or metrics."""
    record = ResultRecord(run_id=new_run_id(kind, label, args.seed), kind=kind, method=label, dataset=dataset,
                          model=model, seed=args.seed, forget_spec=args.forget,
                          config={method: config, "data": args.data, "original": args.original},
                          workers=args.workers, versions=versions(), status="failed", error=error)
    append_record(args.out, record)
    log(f"[{label}] FAILED: {error}")
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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    track(args, [unlearn(args)])
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
