"""Accuracy of a model on a batch source, summed across workers (methods' own decisions and the worker loop)."""

from __future__ import annotations

import torch
from torch import nn

from pipeline import distributed
from pipeline.data.sources import BatchSource
from pipeline.distributed import unwrap


@torch.no_grad()
def count_correct(model: nn.Module, source: BatchSource, device: torch.device, batch_size: int = 256,
                  remap=None) -> tuple[int, int]:
    """(correct, total) over the source, summed across workers. Restores the model's train/eval mode."""
    # The plain module: a DDP forward may broadcast buffers, a collective that would hang
    # workers holding unequal shards.
    model = unwrap(model)
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    for batch in source.batches(batch_size):
        labels = batch["label"].to(device)
        predictions = model(batch["image"].to(device)).argmax(dim=1)
        totals += torch.stack([(predictions == labels).sum().double(), torch.tensor(float(len(labels)), device=device,
                                                                                     dtype=torch.float64)])
    model.train(was_training)
    distributed.all_reduce_sum(totals)
    return int(totals[0].item()), int(totals[1].item())


def accuracy(model: nn.Module, source: BatchSource, device: torch.device, batch_size: int = 256) -> float:
    correct, total = count_correct(model, source, device, batch_size)
    return correct / total if total else 0.0
