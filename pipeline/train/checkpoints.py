"""Per-epoch Ray Train checkpoints: `model.pt` (a project checkpoint, usable as is) + `state.pt` (epoch, optimizer,
every worker's method state: random generators and the like)."""

from __future__ import annotations

import os

import torch

from pipeline.models import ModelSpec, save_checkpoint

MODEL_FILE, STATE_FILE = "model.pt", "state.pt"


def write_epoch_checkpoint(directory: str, model, spec: ModelSpec, epoch: int, optimizer,
                           method_states: list[dict] | None = None) -> None:
    """`method_states`: `UnlearningMethod.resume_state()` of every worker, in rank order."""
    save_checkpoint(model, spec, os.path.join(directory, MODEL_FILE), extra={"epoch": epoch})
    torch.save({"epoch": epoch, "optimizer": optimizer.state_dict() if optimizer else None,
                "method_states": method_states or []}, os.path.join(directory, STATE_FILE))


def read_resume_state(directory: str, rank: int = 0) -> dict:
    """{"epoch", "model" (state dict), "optimizer", "method_state"} for `UnlearningMethod.unlearn(resume=...)`.

    `method_state` is this rank's; None when the checkpoint has none for it (older checkpoints, or a
    restart with more workers), and the run then resumes with fresh random draws."""
    state = torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=True)
    model = torch.load(os.path.join(directory, MODEL_FILE), map_location="cpu", weights_only=True)
    states = state.get("method_states") or []
    return {"epoch": int(state["epoch"]), "optimizer": state["optimizer"], "model": model["state_dict"],
            "method_state": states[rank] if rank < len(states) else None}
