"""Tune callbacks of the sweep driver: one progress line per trial event, a pause after N trials, and the
release of the CPUs/GPUs a stopped trial's Train run would otherwise keep.

Tune pickles its callbacks into the experiment and restores them with it
(`Tuner.restore`), so both keep no per-session state in their pickled form:
progress is counted from the trial list Tune passes in, and a pause budget
belongs to the session that armed it, looked up by the sweep's key.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time

from ray import tune
from ray.tune.experiment import Trial

from pipeline.train.console import log
from tuning.trial import FINISHED_FLAG, TIME_ATTRIBUTE

DONE_STATUSES = (Trial.TERMINATED, Trial.ERROR)


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _best_finished(trials: list) -> tuple[float, Trial] | None:
    """(RF-JSD, trial) of the finished feasible trial with the lowest RF-JSD so far."""
    best = None
    for trial in trials:
        result = trial.last_result or {}
        rf_jsd = result.get("rf_jsd")
        if result.get(FINISHED_FLAG) and result.get("feasible") and rf_jsd is not None and math.isfinite(rf_jsd):
            if best is None or rf_jsd < best[0]:
                best = (rf_jsd, trial)
    return best


class ProgressLine(tune.Callback):
    """Prints `[sweep lotus] 2/8 done, 1 running | trial ...: ... | best so far ...` as trials start and end."""

    def __init__(self, method: str, total: int, keys: list[str]):
        self.method, self.total, self.keys = method, total, keys

    def _settings(self, trial: Trial) -> str:
        return " ".join(f"{key}={_short(trial.config.get(key))}" for key in self.keys)

    def _counts(self, trials: list, starting: Trial | None = None, ending: Trial | None = None) -> str:
        """Done and running trials. Tune updates a trial's status only after the callbacks have run,
        so the trial being reported on counts as running (`starting`) or done (`ending`) here."""
        done = sum(trial.status in DONE_STATUSES or trial is ending for trial in trials)
        running = sum((trial.status == Trial.RUNNING or trial is starting) and trial is not ending
                      for trial in trials)
        return f"[sweep {self.method}] {done}/{self.total} done, {running} running"

    def _best(self, trials: list) -> str:
        best = _best_finished(trials)
        if best is None:
            return "no feasible trial yet"
        rf_jsd, trial = best
        return f"best so far RF-JSD {rf_jsd:.4g} ({self._settings(trial)}, trial {trial.trial_id})"

    def on_trial_start(self, iteration, trials, trial, **info):
        log(f"{self._counts(trials, starting=trial)} | trial {trial.trial_id} started: {self._settings(trial)}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        rf_jsd, epochs = result.get("rf_jsd"), result.get(TIME_ATTRIBUTE)
        verdict = "feasible" if result.get("feasible") else "INFEASIBLE (accuracy drop)"
        ending = "finished" if result.get(FINISHED_FLAG) else "stopped early by the scheduler"
        outcome = f"RF-JSD {rf_jsd:.4g}, {verdict}" if rf_jsd is not None else "no metrics"
        log(f"{self._counts(trials, ending=trial)} | trial {trial.trial_id} {ending} after {epochs} epoch(s): "
            f"{outcome} | {self._best(trials)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        log(f"{self._counts(trials, ending=trial)} | trial {trial.trial_id} FAILED ({self._settings(trial)}); "
            f"see {trial.path} | {self._best(trials)}")


class PauseAfter(tune.Callback):
    """Pause the sweep once N trials have ended in this session, as Ctrl-C would: Tune saves the
    experiment with the remaining trials pending, and `unlearn sweep --resume` continues it.

    Budgets live in this process, keyed by the sweep's run URI (`arm`), because
    the callback object itself is restored from the saved experiment on resume.
    """

    _remaining: dict[str, int] = {}

    def __init__(self, key: str):
        self.key = key

    @classmethod
    def arm(cls, key: str, trials: int | None) -> None:
        if trials is None:
            cls._remaining.pop(key, None)
        else:
            cls._remaining[key] = int(trials)

    @classmethod
    def exhausted(cls, key: str) -> bool:
        return cls._remaining.get(key, 1) <= 0

    def _count(self) -> None:
        if self.key not in self._remaining:
            return
        self._remaining[self.key] -= 1
        if self._remaining[self.key] == 0:
            self._interrupt()

    def _interrupt(self) -> None:
        # Tune's run loop installs handlers for SIGINT and SIGUSR1 that end the run gracefully, with the
        # state saved for Tuner.restore; that handler exists only when Tune runs on the main thread.
        handler = signal.getsignal(signal.SIGUSR1)
        if threading.current_thread() is not threading.main_thread() or handler in (signal.SIG_DFL, None):
            log("[sweep] cannot pause here (Tune is not on the main thread); the sweep goes on")
            return
        log("[sweep] pausing: the trial budget of this session is used up")
        os.kill(os.getpid(), signal.SIGUSR1)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._count()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._count()


def orphaned_placement_groups() -> list:
    """Placement groups of this job still holding resources although the actor that created them is dead.

    Ray ties such a group's lifetime to the job, not to the creating actor. Ray
    Train's own PlacementGroupCleaner removes its worker group's once the Train
    controller dies, but it asks the dashboard's State API, which a local Ray
    started without the dashboard (init_ray, the tests) does not have. Only the
    GCS table has the creator's liveness, so this reads it through Ray's private
    state accessor (ray is pinned in pyproject.toml).
    """
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup

    job_id = ray.get_runtime_context().get_job_id()
    orphans = []
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        group = gcs_pb2.PlacementGroupTableData.FromString(raw)
        created_by_actor = group.creator_actor_id != b"\xff" * len(group.creator_actor_id)  # nil id: a driver
        if (group.state == gcs_pb2.PlacementGroupTableData.CREATED and created_by_actor
                and group.creator_actor_dead and not group.is_detached
                and group.creator_job_id.hex() == job_id):
            orphans.append(PlacementGroup(ray.PlacementGroupID(group.placement_group_id)))
    return orphans


class ReleaseStoppedTrainRuns(tune.Callback):
    """Remove the worker placement groups of nested Train runs whose trial was stopped (ASHA, a pause).

    Stopping a trial kills its Train controller without its shutdown hooks, so
    its worker group's resources stay reserved (see orphaned_placement_groups);
    on a small cluster the next trial's Ray Data tasks then wait forever. Tune
    stops trials asynchronously, so this looks every few seconds, not only when
    a trial ends.
    """

    def __init__(self, every_s: float = 5.0):
        self.every_s = every_s
        self._last = 0.0

    def on_step_end(self, iteration, trials, **info):
        import ray

        if time.monotonic() - self._last < self.every_s:
            return
        self._last = time.monotonic()
        try:
            for group in orphaned_placement_groups():
                log(f"[sweep] releasing the resources of a stopped trial's Train workers ({group.id.hex()[:8]})")
                ray.util.remove_placement_group(group)
        except Exception as exc:  # a cleanup must never end the sweep; Ray's own cleaner may still do it
            log(f"[sweep] could not check for leftover Train worker groups: {type(exc).__name__}: {exc}")
            self.every_s = float("inf")

    def __getstate__(self):
        return {"every_s": self.every_s if math.isfinite(self.every_s) else 5.0, "_last": 0.0}
