"""Batch sources: what methods and metrics iterate over, with or without Ray.

A source yields dict batches {"image": uint8 [B,C,H,W], "label": int64 [B],
"sample_id": array of str}, plus "is_forget" (bool [B]) for mixed sources. The
Ray Train glue wraps a Ray Data iterator; tests and in-process runs use
TensorSource. Methods only call `batches(...)`.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np
import torch


class BatchSource(Protocol):
    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> Iterator[dict]:
        """One pass over this worker's part of the set; a new call starts a new pass (an epoch)."""
        ...


class TensorSource:
    """An in-memory set of images, labels and sample ids (optionally with forget flags)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, sample_ids, is_forget: torch.Tensor | None = None):
        self.images, self.labels = images, labels.long()
        self.sample_ids = np.asarray(sample_ids, dtype=object)
        self.is_forget = is_forget

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> Iterator[dict]:
        order = (torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)) if shuffle
                 else torch.arange(len(self)))
        for start in range(0, len(self), batch_size):
            rows = order[start:start + batch_size]
            batch = {"image": self.images[rows], "label": self.labels[rows], "sample_id": self.sample_ids[rows.numpy()]}
            if self.is_forget is not None:
                batch["is_forget"] = self.is_forget[rows]
            yield batch

    def subset(self, mask) -> "TensorSource":
        mask = torch.as_tensor(np.asarray(mask), dtype=torch.bool)
        flags = self.is_forget[mask] if self.is_forget is not None else None
        return TensorSource(self.images[mask], self.labels[mask], self.sample_ids[mask.numpy()], flags)


def mixed(forget: TensorSource, retain: TensorSource) -> TensorSource:
    """D_f and D_r in one source, each sample flagged, so one shuffled batch holds both."""
    flags = torch.cat([torch.ones(len(forget), dtype=torch.bool), torch.zeros(len(retain), dtype=torch.bool)])
    return TensorSource(torch.cat([forget.images, retain.images]), torch.cat([forget.labels, retain.labels]),
                        np.concatenate([forget.sample_ids, retain.sample_ids]), flags)
