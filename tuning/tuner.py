"""One Tune experiment per method: start it, or restore it with its unfinished trials, and read its trials back.

Every method gets its own Tuner with `trials` samples (equal budgets), so each
keeps its own search space, epoch budget and ASHA rungs, and a sweep resumes
method by method.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pandas as pd
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from pipeline import storage
from pipeline.train.console import verbose
from pipeline.train.runner import absolute
from tuning.callbacks import PauseAfter, ProgressLine, ReleaseStoppedTrainRuns
from tuning.spaces import constants, grid_points, tune_space, tuned_keys
from tuning.trial import FINISHED_FLAG, TIME_ATTRIBUTE, run_trial

METRIC, MODE = "objective", "min"
TUNE_DIR = "tune"
# Each trial is a Train driver that mostly waits; its Train workers ask for their own resources.
TRIAL_DRIVER_CPUS = 1.0
# CPUs left to Ray Data's read and decode tasks when choosing how many trials run at once (RAY_NOTES §6).
DATA_CPUS = 2.0


@dataclass
class MethodPlan:
    """Everything one method's Tune experiment needs; rebuilt on --resume from the sweep's saved arguments."""

    method: str
    space: dict
    trials: int
    search: str = "random"
    scheduler: str = "asha"
    epochs: int = 1
    grace_epochs: int = 1
    max_concurrent: int = 1
    seed: int = 0
    context: dict = field(default_factory=dict)
    tracking: dict | None = None  # {"uri", "experiment", "parent_run_id"}: one MLflow run per trial, nested


def experiment_uri(run_uri: str, method: str) -> str:
    return storage.join(run_uri, TUNE_DIR, method)


def default_concurrency(workers: int, cpus_per_worker: float, gpus: bool) -> int:
    """Trials that fit in the cluster at once, with CPUs left for Ray Data (at least one)."""
    import ray

    resources = ray.cluster_resources()
    per_trial = workers * cpus_per_worker + TRIAL_DRIVER_CPUS
    fit = int((resources.get("CPU", 0) - DATA_CPUS) // per_trial)
    if gpus:
        fit = min(fit, int(resources.get("GPU", 0) // max(workers, 1)))
    return max(1, fit)


def scheduler_for(plan: MethodPlan):
    """ASHA over epochs, deciding only before a trial's last epoch.

    After the last epoch only the final evaluation is left, so a stop there
    would save nothing and lose the trial's record: rungs stay below `epochs`
    (max_t = epochs - 1) and reaching max_t never stops a trial by itself.
    """
    if plan.scheduler == "fifo" or plan.epochs < 2:
        return FIFOScheduler()
    max_t = plan.epochs - 1
    return ASHAScheduler(time_attr=TIME_ATTRIBUTE, max_t=max_t, grace_period=min(plan.grace_epochs, max_t),
                         stop_last_trials=False)


def search_for(plan: MethodPlan) -> BasicVariantGenerator:
    """Random sampling, or exactly `trials` grid points handed to the generator as the points to try.

    The concurrency limit goes to the generator: Tune ignores TuneConfig.max_concurrent_trials
    when a search generator instance is given.
    """
    points = grid_points(plan.space, plan.trials) if plan.search == "grid" else None
    return BasicVariantGenerator(points_to_evaluate=points, max_concurrent=plan.max_concurrent,
                                 random_state=plan.seed)


def trainable_for(plan: MethodPlan):
    return tune.with_resources(tune.with_parameters(run_trial, context=plan.context), {"CPU": TRIAL_DRIVER_CPUS})


def run_config_for(plan: MethodPlan, run_uri: str) -> tune.RunConfig:
    return tune.RunConfig(
        name=plan.method, storage_path=storage.join(absolute(run_uri), TUNE_DIR),
        verbose=1 if verbose() else 0,  # the ProgressLine callback prints a line per trial event instead
        callbacks=[ProgressLine(plan.method, plan.trials, tuned_keys(plan.space)), PauseAfter(run_uri),
                   ReleaseStoppedTrainRuns(), *mlflow_callbacks(plan)])


def mlflow_callbacks(plan: MethodPlan) -> list:
    """Ray Tune's own MLflow integration: each trial's settings as params, each epoch's report as step metrics."""
    if not plan.tracking:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return [MLflowLoggerCallback(tracking_uri=plan.tracking["uri"], experiment_name=plan.tracking["experiment"],
                                 tags={"mlflow.parentRunId": plan.tracking["parent_run_id"], "method": plan.method},
                                 save_artifact=False)]


CREDENTIAL_ENV_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")


def keep_credentials_out_of_ray_logs() -> None:
    """Stop Tune from copying AWS credentials into every trial's runtime environment.

    Tune 2.60 adds the driver's AWS_* keys to each trial actor's `runtime_env.env_vars`, and Ray's
    runtime-env agent writes every runtime env it creates to its log at INFO: the secret key ended up
    in plain text in `runtime_env_agent.log` (tests/test_sweep.py). Trials need no copy: Ray's worker
    processes inherit the environment the local Ray was started with, and cluster nodes use their own
    (an IAM role, their environment).
    """
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = set(class_cache.ENV_VARS_TO_PROPAGATE) - set(CREDENTIAL_ENV_VARS)


def run_experiment(plan: MethodPlan, run_uri: str) -> bool:
    """Start the method's experiment, or restore it and run only its unfinished trials.

    Returns whether every trial has ended; False after a pause or Ctrl-C (the state is saved).
    """
    keep_credentials_out_of_ray_logs()
    uri = absolute(experiment_uri(run_uri, plan.method))
    if tune.Tuner.can_restore(uri):
        if experiment_complete(uri, plan.trials):
            return True
        tuner = tune.Tuner.restore(uri, trainable=trainable_for(plan), resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable_for(plan), param_space=tune_space(plan.space), run_config=run_config_for(plan, run_uri),
            tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=plan.trials,
                                        search_alg=search_for(plan), scheduler=scheduler_for(plan)))
    if not verbose():  # Tune's newer console output prints its header box and paths even at verbose=0
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    tuner.fit()
    return experiment_complete(uri, plan.trials)


def experiment_trials(uri: str) -> list[Trial]:
    """The trials as last saved on storage (what a restore would see), not Tune's in-memory view:
    after a pause Tune marks the trials it stopped as terminated in memory only."""
    if not tune.Tuner.can_restore(absolute(uri)):
        return []
    return list(tune.ExperimentAnalysis(absolute(uri)).trials)


def experiment_complete(uri: str, trials: int) -> bool:
    saved = experiment_trials(uri)
    return len(saved) >= trials and all(trial.status in (Trial.TERMINATED, Trial.ERROR) for trial in saved)


def trial_status(trial: Trial) -> str:
    if trial.status == Trial.ERROR:
        return "error"
    if trial.status != Trial.TERMINATED:
        return "unfinished"
    return "finished" if (trial.last_result or {}).get(FINISHED_FLAG) else "stopped early"


def trial_rows(plan: MethodPlan, run_uri: str) -> list[dict]:
    """One row per trial of the method: settings, RF-JSD, accuracies, feasibility, epochs, seconds."""
    rows = []
    for trial in experiment_trials(experiment_uri(run_uri, plan.method)):
        result = trial.last_result or {}
        settings = {**constants(plan.space), **{key: trial.config.get(key) for key in tuned_keys(plan.space)}}
        rows.append({
            "method": plan.method, "trial_id": trial.trial_id, "status": trial_status(trial), **settings,
            "rf_jsd": result.get("rf_jsd"), "acc_retain": result.get("acc_retain"),
            "acc_test": result.get("acc_test"), "acc_forget": result.get("acc_forget"),
            "feasible": bool(result.get("feasible", False)), "objective": result.get(METRIC),
            "epochs_run": result.get(TIME_ATTRIBUTE), "seconds": result.get("time_total_s"),
            "run_id": result.get("run_id")})
    return sorted(rows, key=lambda row: row["trial_id"])


def trials_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for column in ("rf_jsd", "acc_retain", "acc_test", "acc_forget", "objective", "epochs_run", "seconds"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame
