"""Per-epoch Ray Train checkpoints: `model.pt` (a project checkpoint, usable as is) + `state.pt` (epoch, optimizer,
every worker's method state: random generators and the like; the epochs' history so far), the attempt log
that tells which checkpoint each start of a run's workers went on from, and the finished runs of a multi-run fit
(several methods in one worker group), which a restarted worker group does not run again."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid

import torch

from pipeline import storage
from pipeline.models import ModelSpec, save_checkpoint

MODEL_FILE, STATE_FILE = "model.pt", "state.pt"
ATTEMPTS_DIR = "attempts"  # under the run folder: one entry per start of the worker group
FINISHED_DIR = "finished"  # under a multi-run fit's folder: the result of each run it finished


def write_epoch_checkpoint(directory: str, model, spec: ModelSpec, epoch: int, optimizer,
                           method_states: list[dict] | None = None, history: list[dict] | None = None) -> None:
    """`method_states`: `UnlearningMethod.resume_state()` of every worker, in rank order. `history`: every epoch's
    entry up to this one, earlier attempts' included, so a resumed run's record holds them all. It is stored as
    JSON text: what the record will hold anyway, and loadable with torch's weights_only whatever a method adds."""
    save_checkpoint(model, spec, os.path.join(directory, MODEL_FILE), extra={"epoch": epoch})
    torch.save({"epoch": epoch, "optimizer": optimizer.state_dict() if optimizer else None,
                "method_states": method_states or [], "history": json.dumps(history or [], default=str)},
               os.path.join(directory, STATE_FILE))


def read_resume_state(directory: str, rank: int = 0) -> dict:
    """{"epoch", "model" (state dict), "optimizer", "method_state", "history"} for
    `UnlearningMethod.unlearn(resume=...)`.

    `method_state` is this rank's; None when the checkpoint has none for it (older checkpoints, or a
    restart with more workers), and the run then resumes with fresh random draws. `history` is empty for a
    checkpoint written before it was kept."""
    state = torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=True)
    model = torch.load(os.path.join(directory, MODEL_FILE), map_location="cpu", weights_only=True)
    states = state.get("method_states") or []
    return {"epoch": int(state["epoch"]), "optimizer": state["optimizer"], "model": model["state_dict"],
            "method_state": states[rank] if rank < len(states) else None,
            "history": json.loads(state.get("history") or "[]")}


def event_name(now: dt.datetime | None = None) -> str:
    """A unique file name that sorts by time: restart and attempt entries are read back in this order."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:6]}.json"


def note_attempt(run_folder: str, resumed_after_epoch: int | None) -> None:
    """Rank 0, at every start of the worker group: the epoch checkpoint it went on from (None: from the start)."""
    now = dt.datetime.now(dt.timezone.utc)
    entry = {"time": now.isoformat(timespec="seconds"), "resumed_after_epoch": resumed_after_epoch}
    storage.write_text(storage.join(run_folder, ATTEMPTS_DIR, event_name(now)), json.dumps(entry))


def finished_run_uri(run_folder: str, position: int, method: str) -> str:
    return storage.join(run_folder, FINISHED_DIR, f"{position:03d}-{method}.json")


def keep_finished_run(run_folder: str, position: int, method: str, result: dict) -> None:
    """Rank 0, once a run of a multi-run fit is done (its model saved): its result, so that a worker group restarted
    after a lost node goes on with the next run instead of the fit's first (issue 34). Written atomically."""
    storage.write_text(finished_run_uri(run_folder, position, method),
                       json.dumps(result, default=lambda value: value.item() if hasattr(value, "item") else str(value)))


def read_finished_run(run_folder: str, position: int, method: str, model_out: str | None) -> dict | None:
    """The kept result of that run, or None: not finished, or the model it saved is gone or changed (run it again)."""
    uri = finished_run_uri(run_folder, position, method)
    if not storage.exists(uri):
        return None
    result = json.loads(storage.read_text(uri))
    expected = result.get("checkpoint_sha256")
    if model_out and expected:
        if not storage.exists(model_out) or storage.file_sha256(model_out) != expected:
            return None
    return result
