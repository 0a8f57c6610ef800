"""Does a retain set whose size leaves a short last batch train as well as one of whole batches?

    python -m benchmarks.short_last_batch [--seeds 0,1,2] [--remainders 0,1,2,16] [--workers 1,2] [--epochs 10]
        [--data /tmp/digits-hard]

For each seed and worker count, a model is trained from scratch (the shipped `retrain` recipe: Adam 1e-3, batch
64 per worker) on a seeded D_r of digits-hard training images holding, on every rank, 12 / workers whole batches
plus the remainder, i.e. each rank's own last batch has `remainder` samples. Two workers are two gloo processes with
DDP and the shipped step pairing, no Ray; they take half the steps per epoch, so they train `--epochs` x workers
epochs (the same number of steps). Prints eval-mode accuracy on D_r and D_test per run, and each remainder's change
against remainder 0 (same seed, same workers). Single-threaded per process.

Run it on another CPU's arithmetic too (the tests' tolerances come from both): torch dispatches its own kernels,
oneDNN's convolutions and MKL's matrix products by the CPU separately, so an AVX2-only machine is
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2` on an AVX-512 one.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

CPU = torch.device("cpu")
WHOLE_BATCHES_PER_RANK = {1: 12 * 64, 2: 6 * 64}  # the recipe's batch size is 64


def retain_and_test(uri: str, remainder: int, seed: int, rank: int = 0, world: int = 1):
    """This rank's share of a seeded D_r (its last batch has `remainder` samples) and of the test split."""
    from pipeline.data.local import load_sources

    sources, _ = load_sources(uri, verify=False)
    train, test = sources["train"], sources["test"]
    size = world * (WHOLE_BATCHES_PER_RANK[world] + remainder)
    keep = np.zeros(len(train), dtype=bool)
    keep[np.random.default_rng(seed).permutation(len(train))[:size]] = True
    retain = train.subset(keep)
    return (retain.subset(np.arange(len(retain)) % world == rank), test.subset(np.arange(len(test)) % world == rank))


def trained_accuracies(uri: str, remainder: int, seed: int = 0, epochs: int = 10, rank: int = 0, world: int = 1) -> dict:
    """Train from scratch on this rank's share (`epochs` x `world` epochs: the steps of `epochs` on one worker);
    eval-mode accuracy on D_r and D_test summed over the ranks."""
    from pipeline.methods import create_method
    from pipeline.methods.accuracy import accuracy
    from pipeline.methods.base import UnlearnData
    from pipeline.models import ModelSpec, build_model

    retain, test = retain_and_test(uri, remainder, seed, rank, world)
    torch.manual_seed(seed)
    model = build_model(ModelSpec(name="cnn", num_classes=10, channels=1, image_size=32, mean=[0.2], std=[0.25]))
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    create_method("retrain", {"epochs": epochs * world}, seed=seed, log=None).unlearn(
        model, None, UnlearnData(forget=retain, retain=retain), CPU)
    return {"retain": accuracy(model, retain, CPU), "test": accuracy(model, test, CPU)}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _train_on_worker(rank: int, world: int, port: int, uri: str, remainder: int, seed: int, epochs: int,
                     out_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=600))
    try:
        result = trained_accuracies(uri, remainder, seed, epochs, rank, world)
        if rank == 0:
            with open(out_path, "w") as out:
                json.dump(result, out)
    finally:
        dist.destroy_process_group()


def accuracies(uri: str, remainder: int, seed: int = 0, epochs: int = 10, world: int = 1) -> dict:
    """`trained_accuracies` in this process (1 worker, one torch thread) or on `world` spawned gloo workers."""
    if world == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return trained_accuracies(uri, remainder, seed, epochs)
        finally:
            torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        out_path = os.path.join(folder, "rank0.json")
        mp.spawn(_train_on_worker, args=(world, _free_port(), uri, remainder, seed, epochs, out_path), nprocs=world,
                 join=True)
        with open(out_path) as written:
            return json.load(written)


def _integers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.short_last_batch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=_integers, default=[0, 1, 2])
    p.add_argument("--remainders", type=_integers, default=[0, 1, 2, 16])
    p.add_argument("--workers", type=_integers, default=[1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "digits-hard"))
    args = p.parse_args(argv)
    if not os.path.exists(os.path.join(args.data, "_meta.json")):
        from pipeline.data.converters import prepare

        prepare("digits-hard", args.data, seed=0)
    isa = {name: os.environ.get(name, "-") for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")}
    print(f"{isa}, {args.epochs} epochs' steps")
    print("workers seed remainder  Acc_r  Acc_test  dAcc_r  dAcc_test")
    for world in args.workers:
        for seed in args.seeds:
            whole = None
            for remainder in [0, *[r for r in args.remainders if r]]:
                result = accuracies(args.data, remainder, seed, args.epochs, world)
                whole = whole or result
                print(f"{world:7d} {seed:4d} {remainder:9d}  {result['retain']:.3f}  {result['test']:.3f}     "
                      f"{result['retain'] - whole['retain']:+.3f}  {result['test'] - whole['test']:+.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
