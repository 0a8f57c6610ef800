"""Cross-worker reductions that degrade to no-ops in a single process, and the DDP step pairing built on them.

Ray Train creates a torch.distributed process group on its workers; unit tests
and in-process runs have none. Every reduction in methods and metrics goes
through here so the same code serves both.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """More than one worker. Ray Train sets up a process group for one worker too; its collectives there are
    no-ops that still cost a gloo round trip each (several per training step), so one worker counts as none."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` across workers in place (gloo needs CPU tensors for some dtypes)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather_1d(values: torch.Tensor) -> torch.Tensor:
    """Concatenate 1-D tensors of unequal length from every worker (rank order)."""
    if not is_distributed():
        return values
    length = torch.tensor([values.numel()], device=values.device)
    lengths = [torch.zeros_like(length) for _ in range(world_size())]
    dist.all_gather(lengths, length)
    longest = int(max(int(n) for n in lengths))
    padded = torch.zeros(longest, dtype=values.dtype, device=values.device)
    padded[: values.numel()] = values
    gathered = [torch.zeros_like(padded) for _ in range(world_size())]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(n)] for g, n in zip(gathered, lengths)])


def broadcast_object(value, source_rank: int):
    """Send a picklable object from `source_rank` to every worker (collective: all must call it)."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=source_rank)
    return holder[0]


def all_gather_objects(value) -> list:
    """Every worker's picklable `value`, in rank order (collective: all must call it)."""
    if not is_distributed():
        return [value]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under a DistributedDataParallel wrapper (parameter names without `module.`)."""
    return getattr(model, "module", model)


def synchronized(batches: Iterator[dict], device: torch.device) -> Iterator[tuple[dict, float]]:
    """Yield (batch, loss weight) for DDP steps that every worker takes together, until all have run out.

    No sample is ever dropped, so workers may hold different numbers of samples
    (even none). Every step all-reduces how many real samples each worker has:
    a worker that has run out repeats a batch with weight 0 (it contributes no
    gradient but keeps DDP's collectives in step), and real batches are
    weighted n_local·world/n_step so DDP's gradient average equals the mean
    over the step's real samples. A worker that never had a batch receives one
    from a worker that has (broadcast once), only to take part.
    In a single process this is a plain loop with weight 1.
    """
    if not is_distributed():
        for batch in batches:
            yield batch, 1.0
        return
    world, me = world_size(), rank()
    iterator, last = iter(batches), None
    while True:
        batch = next(iterator, None)
        counts = torch.zeros(world + 1, device=device)
        counts[me] = 0 if batch is None else len(batch["label"])
        counts[world] = 1.0 if batch is None and last is None else 0.0
        all_reduce_sum(counts)
        step_total = counts[:world].sum().item()
        if step_total == 0:
            return
        if counts[world].item() > 0:  # someone has never had a batch: lend it one
            source_rank = int(torch.nonzero(counts[:world]).flatten()[0].item())
            template = broadcast_object(batch if me == source_rank else None, source_rank)
            last = last if last is not None else template
        if batch is None:
            yield last, 0.0
        else:
            last = batch
            yield batch, counts[me].item() * world / step_total

