"""Per-worker running statistics for one model on one split, reduced across workers at the end.

Everything a metric needs is either a sum (counts, correct counts, per-class sums of
probability vectors, per-sample JS) or a per-sample value (softmax entropy, for the
MIA). Sums are all-reduced; entropies are gathered together with a hash of their
sample id and put in sample-id-hash order, so the gathered list, and everything
chosen from it by position, is the same for any batch size, worker count or order.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from pipeline import distributed
from pipeline.metrics.divergence import js_divergence


def sample_keys(sample_ids) -> torch.Tensor:
    """A stable int64 per sample id (Python's hash() is salted per process, so workers would disagree)."""
    keys = [int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "big", signed=True)
            for i in sample_ids]
    return torch.tensor(keys, dtype=torch.int64)


def softmax_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Row-wise -Σ p log p with 0·log 0 = 0 (log_softmax would give 0·(-inf) = nan for saturated logits)."""
    terms = torch.where(probabilities > 0, probabilities * torch.log(probabilities), torch.zeros_like(probabilities))
    return -terms.sum(dim=1)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.double(), dim=1)


class SplitStats:
    """Counts, per-class correct counts, per-class probability sums and entropies of one model on one split."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.class_counts = torch.zeros(num_classes, dtype=torch.int64, device=self.device)
        self.class_correct = torch.zeros(num_classes, dtype=torch.int64, device=self.device)
        # Row c = sum of p(x) over samples whose true class is c (P_c and Q_c of RF-JSD are row means).
        self.class_prob_sums = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=self.device)
        self._entropies: list[torch.Tensor] = []
        self._keys: list[torch.Tensor] = []
        self.entropies: np.ndarray | None = None  # float64, in sample-key order; set by reduce()
        self.reduced = False

    def update(self, logits: torch.Tensor, labels: torch.Tensor, sample_ids) -> None:
        if self.reduced:
            raise RuntimeError("SplitStats.update after reduce(): the sums already hold every worker's share")
        labels = labels.to(self.device)
        probs = probabilities(logits.to(self.device))
        correct = (logits.argmax(dim=1).to(self.device) == labels).long()
        self.class_counts += torch.bincount(labels, minlength=self.num_classes)
        self.class_correct += torch.bincount(labels, weights=correct, minlength=self.num_classes).long()
        self.class_prob_sums.index_add_(0, labels, probs)
        self._entropies.append(softmax_entropy(probs))
        self._keys.append(sample_keys(sample_ids).to(self.device))

    def reduce(self) -> "SplitStats":
        """Combine every worker's share in place (a collective: every worker must call it, in the same order)."""
        if self.reduced:
            raise RuntimeError("SplitStats.reduce called twice: the sums would be counted again")
        distributed.all_reduce_sum(self.class_counts)
        distributed.all_reduce_sum(self.class_correct)
        distributed.all_reduce_sum(self.class_prob_sums)
        entropies = distributed.all_gather_1d(self._concat(self._entropies, torch.float64)).cpu().numpy()
        keys = distributed.all_gather_1d(self._concat(self._keys, torch.int64)).cpu().numpy()
        # Key first, entropy as tie-break (duplicate ids): an order no partition or batching can change.
        self.entropies = entropies[np.lexsort((entropies, keys))]
        self._entropies, self._keys = [], []
        self.reduced = True
        return self

    def _concat(self, parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=self.device)

    @property
    def count(self) -> int:
        return int(self.class_counts.sum().item())

    @property
    def correct(self) -> int:
        return int(self.class_correct.sum().item())

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.count if self.count else None


class PairStats:
    """Sum and count of per-sample JS(p_a(x)‖p_b(x)) for two models on the same batches (JSD vs the gold model)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        # [JS sum, sample count] in one float64 tensor: one all-reduce, counts exact far beyond any dataset size.
        self.totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        self.reduced = False

    def update(self, logits_a: torch.Tensor, logits_b: torch.Tensor) -> None:
        if self.reduced:
            raise RuntimeError("PairStats.update after reduce()")
        per_sample = js_divergence(probabilities(logits_a.to(self.device)), probabilities(logits_b.to(self.device)))
        self.totals += torch.stack([per_sample.sum(), torch.tensor(float(per_sample.numel()), dtype=torch.float64,
                                                                   device=self.device)])

    def reduce(self) -> "PairStats":
        if self.reduced:
            raise RuntimeError("PairStats.reduce called twice")
        distributed.all_reduce_sum(self.totals)
        self.reduced = True
        return self

    @property
    def count(self) -> int:
        return int(self.totals[1].item())

    @property
    def mean(self) -> float | None:
        return self.totals[0].item() / self.totals[1].item() if self.count else None
