"""Per-epoch Ray Train checkpoints: `model.pt` (a project checkpoint, usable as is) + `state.pt` (epoch, optimizer,
every worker's method state: random generators and the like; the epochs' history so far), and the attempt log
that tells which checkpoint each start of a run's workers went on from."""

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
