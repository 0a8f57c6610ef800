"""`unlearn sweep`: Ray Tune search of each method's settings against RF-JSD, the same budget for every method.

Each trial is a real `unlearn run` (Ray Data + its own Ray Train fit), evaluated
every epoch so ASHA can stop poor trials early. Trials whose retain or test
accuracy falls more than --max-acc-drop below the original model's are recorded
but never chosen. A sweep writes under --out (RUN_URI):

    sweep.yaml           its arguments, resolved search spaces and the original's accuracies (for --resume)
    original/            the one evaluation of the original model
    tune/<method>/       one Tune experiment per method
    runs/<trial id>/     each trial's nested run: Train checkpoints, unlearned model, record
    records/             one sweep-trial record per finished trial (with `feasible`)
    trials.parquet/.csv, best_configs.yaml, heatmap_<method>.png

An interrupted sweep (Ctrl-C, a lost driver, --pause-after) continues with
`unlearn sweep --resume RUN_URI`, which reruns only unfinished trials.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import yaml

from jobs.common import (add_data_flags, add_endpoint_flag, add_mlflow_flag, add_ray_flags, apply_endpoint,
                         check_mlflow, data_spec, ray_resources, run_main)
from jobs.paths import absolute, absolute_args
from pipeline import storage
from pipeline.errors import ConfigError
from pipeline.methods import check_method_name
from pipeline.runs.common import open_dataset
from pipeline.runs.spec import DEFAULT_CACHE_MB, DataSpec, EvalSpec, MethodRun, RunSpec
from pipeline.train.console import log
from pipeline.train.ray_address import add_address_flag
from tuning.spaces import SPACES_DIR, constants, epoch_budget, grid_points, method_space, tuned_keys

if TYPE_CHECKING:  # names in annotations only
    import pandas as pd

    from tuning.objective import FeasibilityRule
    from tuning.tuner import MethodPlan

# Ray Tune, torch and pandas (the tuner, the trials' runs, the outputs) are imported inside the functions that use
# them: `unlearn sweep --help` and a flag error then answer at once instead of after seconds of imports.

STATE_NAME = "sweep.yaml"
ORIGINAL_DIR = "original"
# Not part of a sweep's identity: how this session runs, not what the sweep is.
SESSION_ARGUMENTS = ("resume", "pause_after", "address")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Continue an interrupted sweep: "
                                       "unlearn sweep --resume RUN_URI [--pause-after N]")
    add_data_flags(p)
    add_ray_flags(p)
    p.add_argument("--original", required=True, help="checkpoint of the trained model (local or s3://)")
    p.add_argument("--methods", required=True, help="comma-separated methods, e.g. lotus,scrub,salun")
    p.add_argument("--trials", type=int, default=10, help="trials per method (every method gets the same number)")
    p.add_argument("--search", choices=("random", "grid"), default="random",
                   help="random sampling, or an evenly spread grid of exactly --trials points")
    p.add_argument("--scheduler", choices=("asha", "fifo"), default="asha",
                   help="asha: stop poor trials between epochs; fifo: run every trial to the end")
    p.add_argument("--grace-epochs", type=int, default=1, help="epochs before ASHA may stop a trial")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as the cluster fits)")
    p.add_argument("--max-acc-drop", type=float, default=0.05,
                   help="a trial whose retain or test accuracy falls further below the original's is infeasible")
    p.add_argument("--forget", default="random:0.1", help="random:F | class:C1,C2 | ids:FILE | limited:F/R")
    p.add_argument("--seed", type=int, default=3407)
    p.add_argument("--gold", help="retrained model checkpoint: adds JSD and Avg Gap to every trial")
    p.add_argument("--spaces", default=SPACES_DIR, help="folder of <method>.yaml search spaces")
    p.add_argument("--space", action="append", default=[], metavar="METHOD.KEY=KIND:A,B",
                   help="replace a dimension, e.g. --space lotus.alpha=loguniform:1,16 or lotus.lr=choice:1e-4,1e-3")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="fix a setting for every trial, e.g. --set lotus.epochs=3")
    p.add_argument("--pause-after", type=int, help="stop this session after N trials end (continue with --resume)")
    p.add_argument("--out", required=True, help="run URI of the sweep (local folder or s3://)")
    add_mlflow_flag(p)
    return p


def resume_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn sweep --resume",
                                description="Continue an interrupted sweep with the arguments it was started with.")
    p.add_argument("--resume", required=True, metavar="RUN_URI", help="the sweep's --out")
    p.add_argument("--pause-after", type=int, help="stop this session after N trials end")
    add_endpoint_flag(p, ", if it changed since the sweep started")
    add_address_flag(p)
    return p


@dataclass
class SweepOutcome:
    complete: bool
    trials: pd.DataFrame | None = None
    best: dict | None = None


# ---- sweep state (RUN_URI/sweep.yaml) ----------------------------------------------------------------------------

def state_uri(run_uri: str) -> str:
    return storage.join(run_uri, STATE_NAME)


def load_state(run_uri: str) -> dict:
    uri = state_uri(run_uri)
    if not storage.exists(uri):
        raise ConfigError(f"no sweep to resume at {run_uri} ({uri} does not exist)")
    return yaml.safe_load(storage.read_text(uri))


def save_state(run_uri: str, state: dict) -> None:
    storage.write_text(state_uri(run_uri), yaml.safe_dump(state, sort_keys=False))


def method_names(text: str) -> list[str]:
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise ConfigError("--methods names no method")
    for name in names:
        check_method_name(name)  # an unknown name fails here with the list of methods
    return names


def resolved_space(method: str, args: argparse.Namespace) -> dict:
    """The method's space with overrides, its keys checked against the method's settings."""
    from pipeline.runs.unlearn import method_settings

    space = method_space(method, args.spaces, args.space, args.set)
    method_settings(method, {**constants(space), **grid_points(space, 1)[0]})  # unknown keys fail here
    return space


def new_state(args: argparse.Namespace) -> dict:
    if args.trials < 1:
        raise ConfigError("--trials must be at least 1")
    if args.max_acc_drop < 0:
        raise ConfigError("--max-acc-drop must not be negative")
    unknown = sorted(set(named_methods(args.space) + named_methods(args.set)) - set(method_names(args.methods)))
    if unknown:
        raise ConfigError(f"--space/--set name method(s) {unknown} that are not in --methods {args.methods}")
    arguments = {key: value for key, value in vars(args).items() if key not in SESSION_ARGUMENTS}
    return {"arguments": arguments,
            "spaces": {method: resolved_space(method, args) for method in method_names(args.methods)},
            "original": None, "wall_seconds": 0.0}


def named_methods(pairs: list[str]) -> list[str]:
    return [pair.partition(".")[0].strip() for pair in pairs]


# ---- the original model's accuracies -----------------------------------------------------------------------------

def verified_data(args: argparse.Namespace) -> DataSpec:
    """The shards as the sweep's runs read them: the sweep verified them once, so its runs skip it."""
    return dataclasses.replace(data_spec(args), verify=False)


def evaluate_original(args: argparse.Namespace) -> dict:
    """Evaluate the original once per sweep: the reference for the feasibility rule."""
    from pipeline.runs.evaluate import evaluate

    spec = EvalSpec(data=verified_data(args), model=args.original, out=storage.join(args.out, ORIGINAL_DIR),
                    forget=args.forget, seed=args.seed, label="original", ray=ray_resources(args))
    record = evaluate(spec)
    return {"acc_retain": float(record.metrics["acc_retain"]), "acc_test": float(record.metrics["acc_test"]),
            "record": record.run_id}


# ---- plans and outputs -------------------------------------------------------------------------------------------

def trial_context(args: argparse.Namespace, method: str, rule: FeasibilityRule) -> dict:
    """What every trial of the method shares (plain data, passed to each trial): the run it is, but for its
    settings and where it goes, and the feasibility rule."""
    run_uri = absolute(args.out)
    spec = RunSpec(data=verified_data(args), original=args.original, runs=(MethodRun(method),), out=run_uri,
                   forget=args.forget, seed=args.seed, gold=args.gold, ray=ray_resources(args))
    return {"spec": spec, "run_uri": run_uri,
            "rule": {"acc_retain": rule.acc_retain, "acc_test": rule.acc_test, "max_drop": rule.max_drop}}


def method_plans(args: argparse.Namespace, spaces: dict, rule: FeasibilityRule) -> list[MethodPlan]:
    from pipeline.runs.unlearn import method_settings
    from tuning.tuner import MethodPlan, default_concurrency

    concurrency = args.max_concurrent or default_concurrency(args.workers, args.cpus_per_worker, args.gpus)
    return [MethodPlan(method=method, space=space, trials=args.trials, search=args.search, scheduler=args.scheduler,
                       epochs=epoch_budget(space, int(method_settings(method).get("epochs", 1))),
                       grace_epochs=args.grace_epochs, max_concurrent=concurrency, seed=args.seed,
                       context=trial_context(args, method, rule))
            for method, space in spaces.items()]


def summary_line(method: str, frame: pd.DataFrame, best: dict | None) -> str:
    counts = frame["status"].value_counts().to_dict()
    tally = (f"{len(frame)} trials: {int(frame['feasible'].sum())} feasible, {counts.get('finished', 0)} finished, "
             f"{counts.get('stopped early', 0)} stopped early, {counts.get('error', 0)} failed")
    if best is None:
        return f"[sweep {method}] {tally}; NO feasible finished trial, so no best config"
    chosen = frame[(frame["status"] == "finished") & (frame["feasible"] == True)]  # noqa: E712
    top = chosen.loc[chosen["rf_jsd"].idxmin()]
    return (f"[sweep {method}] {tally}; best {best} → RF-JSD {top['rf_jsd']:.4g} (x1e4 {top['rf_jsd'] * 1e4:.2f}), "
            f"Acc_r {top['acc_retain']:.4f}, Acc_test {top['acc_test']:.4f} (trial {top['trial_id']})")


def write_outputs(plans: list[MethodPlan], run_uri: str) -> SweepOutcome:
    import pandas as pd

    from pipeline.results.records import rebuild_parquet
    from tuning.outputs import best_settings, write_best_configs, write_heatmap, write_table
    from tuning.tuner import trial_rows, trials_frame

    frames = {plan.method: trials_frame(trial_rows(plan, run_uri)) for plan in plans}
    table = pd.concat(frames.values(), ignore_index=True)
    written = write_table(table, run_uri)
    best = {}
    for plan in plans:
        settings = best_settings(frames[plan.method], plan.space)
        if settings is not None:
            best[plan.method] = settings
        log(summary_line(plan.method, frames[plan.method], settings))
        heatmap = write_heatmap(frames[plan.method], plan.method, plan.space, run_uri)
        written += [heatmap] if heatmap else []
    written.append(write_best_configs(best, run_uri))
    if (table["status"] == "finished").any():
        written.append(rebuild_parquet(run_uri))  # the trials wrote records without touching the shared index
    log("sweep outputs: " + ", ".join(written))
    return SweepOutcome(complete=True, trials=table, best=best)


# ---- the sweep ---------------------------------------------------------------------------------------------------

def run_sweep(args: argparse.Namespace, state: dict, pause_after: int | None = None) -> SweepOutcome:
    """Run (or continue) every method's experiment in turn, then write the outputs."""
    from pipeline.train.runner import init_ray
    from tuning.callbacks import PauseAfter
    from tuning.objective import FeasibilityRule
    from tuning.tuner import run_experiment

    started = time.perf_counter()
    run_uri = absolute(args.out)  # Tune and the trials' workers need an absolute local path
    tracking = check_mlflow(getattr(args, "mlflow", None), run_uri)
    meta, _ = open_dataset(data_spec(args))  # verify the shards once; trials skip it
    init_ray(args.workers, args.cpus_per_worker)
    if state["original"] is None:
        state["original"] = evaluate_original(args)
        save_state(run_uri, state)
    original = state["original"]
    rule = FeasibilityRule(original["acc_retain"], original["acc_test"], args.max_acc_drop)
    log(f"[sweep] original: Acc_r {rule.acc_retain:.4f}, Acc_test {rule.acc_test:.4f}; a feasible trial stays "
        f"within {rule.max_drop} of both")
    PauseAfter.arm(run_uri, pause_after)
    try:
        plans = method_plans(args, state["spaces"], rule)
        for plan in plans:
            log(f"[sweep {plan.method}] {plan.trials} trials, {plan.search} search over {tuned_keys(plan.space)}, "
                f"{plan.scheduler} over up to {plan.epochs} epochs, {plan.max_concurrent} at once")
            if tracking:
                plan.tracking = sweep_tracking(tracking, meta.name, plan, run_uri)
            finished = not PauseAfter.exhausted(run_uri) and run_experiment(plan, run_uri)
            if plan.tracking:
                from pipeline.results.tracking import end_run

                end_run(tracking, plan.tracking["parent_run_id"])
            if not finished:
                log(f"[sweep] paused with trials left; continue with: unlearn sweep --resume {args.out}")
                return SweepOutcome(complete=False)
        return write_outputs(plans, run_uri)
    finally:
        PauseAfter.arm(run_uri, None)
        seconds = time.perf_counter() - started
        state["wall_seconds"] = float(state.get("wall_seconds") or 0.0) + seconds
        save_state(run_uri, state)
        log(f"[sweep] this session took {seconds:.1f} s ({state['wall_seconds']:.1f} s over all sessions)")


def sweep_tracking(uri: str, experiment: str, plan, run_uri: str) -> dict:
    """An MLflow run for this method's sweep; Tune's MLflow callback nests one run per trial under it."""
    from pipeline.results.tracking import start_parent_run

    parent = start_parent_run(uri, experiment, f"sweep {plan.method}",
                              {"sweep": run_uri, "method": plan.method, "space": plan.space, "trials": plan.trials,
                               "search": plan.search, "scheduler": plan.scheduler})
    log(f"[sweep {plan.method}] MLflow: trials nested under run {parent} at {uri}")
    return {"uri": uri, "experiment": experiment, "parent_run_id": parent}


def sweep(args: argparse.Namespace) -> SweepOutcome:
    """A new sweep under args.out."""
    apply_endpoint(args)
    # Stored for --resume, which may run from another folder; Tune and the trials' workers run elsewhere too.
    absolute_args(args, paths=("out", "data", "original", "gold", "spaces"), specs=("forget",))
    if storage.exists(state_uri(args.out)):
        raise ConfigError(f"{args.out} already holds a sweep: continue it with --resume {args.out}, "
                          "or give a new --out")
    state = new_state(args)
    save_state(args.out, state)
    return run_sweep(args, state, args.pause_after)


def resume(run_uri: str, pause_after: int | None = None, s3_endpoint: str | None = None,
           address: str | None = None) -> SweepOutcome:
    """Continue the sweep stored at run_uri with the arguments it was started with (the Ray it runs on is this
    session's: --address, else RAY_ADDRESS, else local)."""
    # before reading the state from S3
    apply_endpoint(argparse.Namespace(s3_endpoint=s3_endpoint, address=address))
    state = load_state(absolute(run_uri))
    # Arguments added since the sweep started take their defaults.
    args = argparse.Namespace(**{"data_mode": "auto", "cache_mb": DEFAULT_CACHE_MB, **state["arguments"]})
    args.s3_endpoint = s3_endpoint or args.s3_endpoint
    apply_endpoint(args)
    log(f"[sweep] resuming {run_uri}: methods {args.methods}, {args.trials} trials each")
    return run_sweep(args, state, pause_after)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(arg == "--resume" or arg.startswith("--resume=") for arg in argv):
        args = resume_parser().parse_args(argv)
        resume(args.resume, args.pause_after, args.s3_endpoint, args.address)
    else:
        sweep(parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
