"""BatchNorm statistics: re-estimated after an epoch (the shared loop's refresh) and measured (JiT).

Both run torch's own `update_bn` over a capped, seeded number of batches; what it adds here is exact
pooling across workers (each worker sees its own shard) and, for the moments, leaving the model as it was.
`StepStatistics` gets the refresh without the extra pass: the running statistics become the plain average
of the epoch's own training batches, the mechanism `update_bn` uses, read off the forward passes the epoch
makes anyway.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from pipeline import distributed
from pipeline.distributed import unwrap


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that keep running statistics, in the plain module (no DDP buffer broadcasts)."""
    return [m for m in unwrap(model).modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


class _CountedImages:
    """The images of (at most `max_batches` of) a source's seeded shuffle, counting the samples handed out."""

    def __init__(self, source, batch_size: int, max_batches: int, seed: int, device: torch.device):
        self.batches = itertools.islice(source.batches(batch_size, shuffle=True, seed=seed), max_batches)
        self.device, self.seen = device, 0

    def __iter__(self):
        for batch in self.batches:
            self.seen += len(batch["label"])
            yield batch["image"].to(self.device, non_blocking=True)


@torch.no_grad()
def batchnorm_input_moments(model: nn.Module, source, device: torch.device, batch_size: int,
                            max_batches: int, seed: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """Per-channel (mean, var) of every BatchNorm layer's input over (at most `max_batches` of) `source`.

    Measured in train mode, as training sees them; the model's buffers and mode are left as they were.
    Workers pool their estimates exactly (weighted by samples), so all get the same moments.
    Returns ([], 0) when no worker saw a sample.
    """
    module = unwrap(model)
    norms = batchnorm_layers(module)
    if not norms:
        return [], 0
    saved = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    images = _CountedImages(source, batch_size, max_batches, seed, device)
    update_bn(images, module)  # a cumulative average over the batches (momentum None), mode restored
    # Pool per-worker estimates: mean = sum(n_i mean_i) / N, E[x^2] = sum(n_i (var_i + mean_i^2)) / N.
    weight = float(images.seen)
    packed = torch.cat([torch.cat([weight * m.running_mean, weight * (m.running_var + m.running_mean ** 2)])
                        for m in norms] + [torch.tensor([weight], device=norms[0].running_mean.device)])
    distributed.all_reduce_sum(packed)
    total = float(packed[-1])
    for norm, (old_mean, old_var) in zip(norms, saved):
        norm.running_mean.copy_(old_mean)
        norm.running_var.copy_(old_var)
    if total == 0:
        return [], 0
    moments, offset = [], 0
    for norm in norms:
        size = norm.running_mean.numel()
        mean = packed[offset:offset + size] / total
        moments.append((mean, packed[offset + size:offset + 2 * size] / total - mean ** 2))
        offset += 2 * size
    return moments, int(total)


@torch.no_grad()
def refresh_batchnorm_statistics(model: nn.Module, source, device: torch.device, batch_size: int,
                                 max_batches: int, seed: int) -> int:
    """Re-estimate every BatchNorm's running mean/var from (at most `max_batches` of) `source`; return samples seen.

    Why: a method trains with batch statistics but acc_f, tau, early stopping and every metric use the
    running statistics. With few steps per epoch (momentum 0.1, 3 steps an epoch on digits-hard) those lag
    far behind the weights, and the eval-mode model collapses (test 0.76 -> 0.30 in two epochs) while
    looking as if it forgot D_f; with fresh statistics the same weights score test 0.71 and forget 1.0.
    If no worker saw a sample, the old statistics stay.
    """
    moments, seen = batchnorm_input_moments(model, source, device, batch_size, max_batches, seed)
    for norm, (mean, var) in zip(batchnorm_layers(model), moments):
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)
    return seen


class StepStatistics:
    """An epoch's training forwards as the BatchNorm refresh: running statistics = their average over the epoch.

    `start()` (before the epoch's first step) resets every BatchNorm's running statistics and sets momentum None,
    so train-mode forwards keep a cumulative average over batches, exactly what `update_bn` does over its extra
    pass; `finish()` (after the last step) restores the momentum. The difference from the refresh pass: each
    batch's statistics are those of the weights it was computed with (one optimizer step old on average), not
    of the epoch's final weights. One process only: under DDP every forward broadcasts rank 0's buffers, so
    per-worker averages cannot be kept; the shared loop falls back to the refresh pass there. An epoch without a
    training forward keeps the statistics it started with.
    """

    def __init__(self, model: nn.Module):
        self.norms = batchnorm_layers(model)
        self.saved: list = []

    def start(self) -> "StepStatistics":
        self.saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
                      for m in self.norms]
        for norm in self.norms:
            norm.reset_running_stats()
            norm.momentum = None
        return self

    @torch.no_grad()
    def finish(self) -> int:
        """Restore the momenta; return how many training forwards the statistics average (0: the old ones kept)."""
        forwards = int(self.norms[0].num_batches_tracked) if self.norms else 0
        for norm, (mean, var, tracked, momentum) in zip(self.norms, self.saved):
            norm.momentum = momentum
            if forwards == 0:
                norm.running_mean.copy_(mean)
                norm.running_var.copy_(var)
                norm.num_batches_tracked.copy_(tracked)
        return forwards
