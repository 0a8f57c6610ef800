"""Run identity: what a resumable run under OUT/ray/NAME is, so that a rerun of the command goes on only with the
same run.

Ray Train resumes any fit of the same name from its newest checkpoint, whatever the settings: a rerun with
lotus.alpha=2 once resumed a finished alpha=8 run and recorded alpha=2, and a gold model rerun with another
--forget would have saved the weights trained on the old D_f. So every resumable run (`unlearn run`, `unlearn
train`, a sweep trial, a bench's original and gold models; begin_run) stores its identity in `run_spec.json`
before its fit, and its record's id after it (a diffusion run uses check_rerun without the worker count):

- an identical rerun of a finished run returns that record and runs nothing (a second record would be a
  0-epoch copy);
- an identical rerun of an unfinished run goes on from its newest checkpoint, only with the worker count it
  was started with (each worker's share of the data and its random state depend on the count);
- other settings are refused, naming what differs, unless `overwrite` (which deletes the old run first);
- a run that diverged never blocks the corrected rerun its error message asks for: any other rerun deletes it
  and starts afresh, saying so.
"""

from __future__ import annotations

import contextlib
import json

from pipeline import storage
from pipeline.data.removal import removal_fingerprint
from pipeline.errors import ConfigError, DivergedError
from pipeline.train.console import log

IDENTITY_FILE = "run_spec.json"
# Keys of the identity file that are not the run's identity: the finished run's record, the worker count it was
# started with (must match to resume, not to return the record) and whether it diverged.
RECORD, WORKERS, STATUS = "record", "workers", "status"
DIVERGED = "diverged"


class RerunRefused(ConfigError):
    """OUT holds a run of this name with another identity (or another worker count): nothing was changed.
    `reason` says what is there; `advice`, what the user can do (a caller with other flags gives its own)."""

    def __init__(self, reason: str, advice: str):
        super().__init__(f"{reason}; {advice}")
        self.reason, self.advice = reason, advice


def run_folder_uri(out: str, name: str) -> str:
    from pipeline.train.runner import run_folder

    return run_folder(out, name)


def identity_uri(out: str, name: str) -> str:
    return storage.join(run_folder_uri(out, name), IDENTITY_FILE)


def stored_identity(out: str, name: str) -> dict | None:
    uri = identity_uri(out, name)
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else None


def remember_identity(out: str, name: str, identity: dict, record_id: str | None = None,
                      workers: int | None = None) -> None:
    """Store what run `name` is, before its fit (with the worker count it runs on); with `record_id`, after it,
    marking it finished."""
    stored = dict(identity)
    if workers is not None:
        stored[WORKERS] = workers
    if record_id is not None:
        stored[RECORD] = record_id
    storage.write_text(identity_uri(out, name), json.dumps(stored, indent=2))


def mark_diverged(out: str, name: str) -> None:
    """After a fit that ended in DivergedError: the run may be replaced by a rerun with other settings."""
    stored = stored_identity(out, name)
    if stored is not None:
        storage.write_text(identity_uri(out, name), json.dumps({**stored, STATUS: DIVERGED}, indent=2))


def is_diverged(error: BaseException) -> bool:
    """A DivergedError, raised here or on a Ray worker (it reaches the driver inside Ray Train's error text)."""
    return isinstance(error, DivergedError) or "DivergedError" in str(error)


@contextlib.contextmanager
def marking_divergence(out: str, name: str):
    """Around a single run's fit: a divergence marks the run as diverged (mark_diverged), then propagates."""
    try:
        yield
    except Exception as exc:
        if is_diverged(exc):
            mark_diverged(out, name)
        raise


def check_rerun(out: str, name: str, identity: dict, overwrite: bool, workers: int | None = None,
                advice: str = "use another --out or --name, or --overwrite to start it afresh") -> str | None:
    """Before a single run: None to (re)start it, or the run_id of an identical run that already finished.

    `workers`: this command's worker count; an unfinished identical run started with another count is refused
    (None: not checked). `advice` ends the refusal of other settings: what the user can do instead.
    """
    stored = stored_identity(out, name)
    if stored is None:
        return None
    earlier = {key: value for key, value in stored.items() if key not in (RECORD, WORKERS, STATUS)}
    before = stored.get(WORKERS)
    other_workers = workers is not None and before is not None and before != workers
    if stored.get(STATUS) == DIVERGED and (earlier != identity or other_workers):
        changed = differences(earlier, identity) or f"workers: {before} there, {workers} now"
        log(f"run {name!r} under {out} diverged with other settings ({changed}): deleting it and starting afresh")
        _delete(out, name)
        return None
    if earlier != identity:
        if overwrite:
            _delete(out, name)
            return None
        raise RerunRefused(f"{out} already holds run {name!r} with other settings ({differences(earlier, identity)})",
                           advice)
    if stored.get(RECORD):
        return stored[RECORD]
    if other_workers:
        if overwrite:
            _delete(out, name)
            return None
        raise RerunRefused(
            f"{out} holds run {name!r} unfinished, started with {before} worker(s): going on with {workers} would give "
            f"each worker another share of the data and fresh random state, so the result would be neither count's "
            f"uninterrupted run", f"rerun with --workers {before} to resume it, or --overwrite to start it afresh "
            f"with {workers}")
    return None


def begin_run(out: str, name: str, identity: dict, overwrite: bool, workers: int,
              advice: str = "use another --out or --name, or --overwrite to start it afresh") -> str | None:
    """check_rerun, then store the identity for the fit to come. Returns the record id of an identical finished
    run (nothing to do), else None. A rerun that goes on from an unfinished run leaves a note in its restart log,
    so that its record tells that it was resumed and after which epoch (pipeline.train.runner.read_restarts)."""
    from pipeline.train.runner import note_rerun

    going_on = stored_identity(out, name) is not None
    finished = check_rerun(out, name, identity, overwrite, workers, advice)
    if finished:
        return finished
    if going_on and stored_identity(out, name) is not None:  # not deleted by --overwrite or a divergence
        note_rerun(out, name)
    remember_identity(out, name, identity, workers=workers)
    return None


def with_data_removals(identity: dict, meta) -> dict:
    """`identity` plus, for a dataset that deletion requests removed samples from, the fingerprint of its current
    shard list (pipeline/data/removal.py): a run made on the data before a removal held the forgotten samples, so a
    rerun after it must be neither resumed from it nor answered by its record. Identities of datasets nothing was
    removed from stay as they were."""
    fingerprint = removal_fingerprint(meta)
    return identity if fingerprint is None else {**identity, "data_removals": fingerprint}


def differences(before: dict, now: dict) -> str:
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


def _delete(out: str, name: str) -> None:
    storage.delete_tree(run_folder_uri(out, name))
