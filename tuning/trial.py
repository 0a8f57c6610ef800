"""One Tune trial: the real `unlearn run` (Ray Data + its own Ray Train fit) for one set of method settings.

The trial is the Train driver (RAY_NOTES §2): it calls `pipeline.runs.unlearn.unlearn`
on the sweep's RunSpec with its own settings and output, with a callback that forwards every epoch's evaluation to Tune, judged by the
feasibility rule, so ASHA can stop a poor trial between epochs. A trial that
runs to the end stores a sweep-trial record and reports its final metrics.
The nested Train run is named after the trial id, so a trial resumed by
`Tuner.restore` continues its Train run from the last epoch checkpoint; as every single run, it carries the run
identity of pipeline/runs/identity.py (the same settings and worker count, or a clear refusal).
"""

from __future__ import annotations

import dataclasses

from ray.tune.integration.ray_train import TuneReportCallback

from pipeline import storage
from pipeline.errors import UnlearnError
from pipeline.results.records import RecordExistsError, ResultRecord, append_record
from pipeline.runs.identity import is_diverged
from pipeline.runs.spec import MethodRun, RunSpec
from tuning.objective import FeasibilityRule

TIME_ATTRIBUTE = "epochs_done"  # ASHA's clock: epochs finished, the same count in epoch and final reports
FINISHED_FLAG = "trial_finished"  # only a trial's final report carries it (not one stopped by the scheduler)
RUNS_DIR = "runs"


class JudgedReportCallback(TuneReportCallback):
    """Forward each epoch's rank-0 metrics to Tune with `feasible`, `objective` and the epoch count added.

    Runs in the nested Train run's controller; Tune needs the objective in every result.
    """

    def __init__(self, rule: FeasibilityRule):
        super().__init__()
        self.rule = rule

    def after_report(self, run_context, metrics, checkpoint):
        first = metrics[0]
        judged = {**first, **self.rule.judge(first), TIME_ATTRIBUTE: int(first.get("epoch", -1)) + 1}
        super().after_report(run_context, [judged, *metrics[1:]], checkpoint)


def trial_run_uri(run_uri: str, trial_id: str) -> str:
    """Where a trial's nested run keeps its Train checkpoints, unlearned model and its own record."""
    return storage.join(run_uri, RUNS_DIR, trial_id)


def trial_spec(context: dict, trial_id: str, settings: dict) -> RunSpec:
    """The sweep's run with this trial's settings, under its own output and named after the trial."""
    spec: RunSpec = context["spec"]
    return dataclasses.replace(spec, runs=(MethodRun(spec.runs[0].method, settings),), name=trial_id,
                               out=trial_run_uri(context["run_uri"], trial_id))


def plain(value):
    """Python scalars for YAML/JSON: Tune samples numpy floats and ints."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def sweep_record_id(method: str, seed: int, trial_id: str) -> str:
    """One id per trial, so a trial run again after an interruption cannot be recorded twice."""
    return f"sweep-{method}-s{seed}-{trial_id}"


def store_trial_record(context: dict, record: ResultRecord, trial_id: str, verdict: dict) -> ResultRecord:
    """Copy the nested run's record into the sweep's records, with the verdict and the trial id added."""
    stored = dataclasses.replace(
        record, run_id=sweep_record_id(record.method, record.seed, trial_id),
        metrics={**record.metrics, **verdict},
        config={**record.config, "sweep": {"trial_id": trial_id, "run": context["run_uri"]}},
        notes=f"sweep trial {trial_id}; the nested run is under {trial_run_uri(context['run_uri'], trial_id)}")
    try:
        append_record(context["run_uri"], stored, update_parquet=False)  # the driver rebuilds the index once
    except RecordExistsError:
        pass  # recorded by an earlier attempt of this trial, before an interruption: keep that one
    return stored


def epochs_done(record: ResultRecord) -> int:
    """Epochs behind the final model. Epoch numbers in the history are absolute, so this also holds for
    a Train run resumed from a checkpoint (whose own epoch count starts after the checkpoint)."""
    history = record.config.get("history") or []
    return int(history[-1]["epoch"]) + 1 if history else int(record.config.get("epochs_run") or 0)


def report_diverged_trial(context: dict, settings: dict, trial_id: str, rule: FeasibilityRule, error: str) -> None:
    """A trial whose method diverged: recorded as failed and reported to Tune as infeasible, and the sweep goes on
    (the searcher learns that corner of the space is bad; the best trial can never be this one)."""
    from ray import tune

    from pipeline.data.shards import read_meta
    from pipeline.models import load_checkpoint

    spec: RunSpec = context["spec"]
    method = spec.runs[0].method
    record = ResultRecord(run_id="pending", kind="sweep-trial", method=method,
                          dataset=read_meta(spec.data.uri).name, model=load_checkpoint(spec.original)[1].name,
                          seed=spec.seed, forget_spec=spec.forget,
                          config={method: settings, "data": spec.data.uri}, status="failed", error=error)
    verdict = rule.judge({})
    stored = store_trial_record(context, record, trial_id, verdict)
    tune.report({**verdict, TIME_ATTRIBUTE: 0, FINISHED_FLAG: True, "run_id": stored.run_id, "failed": True})


def run_trial(config: dict, context: dict) -> None:
    """Tune function trainable: `config` holds the method settings, `context` what every trial shares."""
    import ray.data
    from ray import tune

    from pipeline.runs.unlearn import unlearn

    ray.data.DataContext.get_current().enable_progress_bars = False
    trial_id = tune.get_context().get_trial_id()
    rule = FeasibilityRule(**context["rule"])
    settings = {key: plain(value) for key, value in config.items()}
    try:
        [record] = unlearn(trial_spec(context, trial_id, settings), tune_callbacks=[JudgedReportCallback(rule)],
                           record_kind="sweep-trial")
    except UnlearnError as exc:
        if not is_diverged(exc):
            raise
        return report_diverged_trial(context, settings, trial_id, rule, str(exc))
    verdict = rule.judge(record.metrics)
    stored = store_trial_record(context, record, trial_id, verdict)
    numbers = {key: value for key, value in record.metrics.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    tune.report({**numbers, **verdict, TIME_ATTRIBUTE: epochs_done(record), FINISHED_FLAG: True,
                 "run_id": stored.run_id, "unlearn_seconds": record.unlearn_seconds})
