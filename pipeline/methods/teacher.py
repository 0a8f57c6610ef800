"""The frozen teacher some methods learn from (the original model) and the cache of its outputs per sample."""

from __future__ import annotations

import copy

import torch
from torch import nn

from pipeline.distributed import unwrap


def frozen_copy(model: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(unwrap(model)).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


class FrozenOutputs:
    """A frozen model's outputs per sample id: computed the first time a sample is seen, looked up after.

    Exact, not an approximation: the model never changes, and the ingest path gives a sample the
    same input every epoch (decoding and resizing are deterministic; there is no random
    augmentation). LoTUS on digits-hard: 3 teacher passes instead of 30 and ~15 % less time, the
    same weights to the bit. Past `max_bytes` it stops storing and just computes.
    """

    def __init__(self, model: nn.Module, max_bytes: int):
        self.model, self.max_bytes = model, max_bytes
        self.rows: dict = {}  # sample id -> row of the stored outputs
        self.chunks: list[torch.Tensor] = []  # one per batch that added rows; joined on the first lookup
        self.stored_bytes = 0
        self.forward_passes = 0

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, sample_ids) -> torch.Tensor:
        rows = [self.rows.get(sample_id) for sample_id in sample_ids]
        if None not in rows:
            return self._lookup(rows)
        outputs = self.model(images)
        self.forward_passes += 1
        self._store(outputs, sample_ids, rows)
        return outputs

    def _store(self, outputs: torch.Tensor, sample_ids, rows: list) -> None:
        missing = [index for index, row in enumerate(rows) if row is None]
        new = outputs[missing]
        size = new.numel() * new.element_size()
        if self.stored_bytes + size > self.max_bytes:
            return
        first_row = sum(len(chunk) for chunk in self.chunks)
        for offset, index in enumerate(missing):
            self.rows[sample_ids[index]] = first_row + offset
        self.chunks.append(new)
        self.stored_bytes += size

    def _lookup(self, rows: list) -> torch.Tensor:
        if len(self.chunks) > 1:
            self.chunks = [torch.cat(self.chunks)]
        return self.chunks[0].index_select(0, torch.tensor(rows, device=self.chunks[0].device))
