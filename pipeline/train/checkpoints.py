"""Per-epoch Ray Train checkpoints: `model.pt` (a project checkpoint, usable as is) + `state.pt` (epoch, optimizer)."""

from __future__ import annotations

import os

import torch

from pipeline.models import ModelSpec, save_checkpoint

MODEL_FILE, STATE_FILE = "model.pt", "state.pt"


def write_epoch_checkpoint(directory: str, model, spec: ModelSpec, epoch: int, optimizer) -> None:
    save_checkpoint(model, spec, os.path.join(directory, MODEL_FILE), extra={"epoch": epoch})
    torch.save({"epoch": epoch, "optimizer": optimizer.state_dict() if optimizer else None},
               os.path.join(directory, STATE_FILE))


def read_resume_state(directory: str) -> dict:
    """{"epoch", "model" (state dict), "optimizer"} for `UnlearningMethod.unlearn(resume=...)`."""
    state = torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=True)
    model = torch.load(os.path.join(directory, MODEL_FILE), map_location="cpu", weights_only=True)
    return {"epoch": int(state["epoch"]), "optimizer": state["optimizer"], "model": model["state_dict"]}
