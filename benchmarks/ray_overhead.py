"""Benchmark: what Ray adds to a method's time. Each method in process vs through Ray Train, side by side.

    python -m benchmarks.ray_overhead [--data URI] [--original CKPT] [--methods lotus scrub ...]
                                      [--threads 2] [--repeats 2] [--json OUT]

For every method with more than one epoch (or those named), on the same data, seed and number of
torch threads, it times the method's own region (`MethodReport.unlearn_seconds`: barriers at both
ends, no start-up, no evaluation):
  in process   the method on in-memory TensorSources in a fresh Python process (`pipeline.methods.harness`),
               as the Ray Train worker is a fresh process: both pay the same first-use costs;
  Ray Train    the same method in one Ray Train worker (1 worker, `--cpus-per-worker` = threads, so Ray
               gives torch that many threads), fed by the project's data path with the decode-once cache,
               all methods in one fit as `unlearn bench` runs them.
Rounds alternate (in process, then Ray) `--repeats` times and the median of each is kept, so drift
in the machine's speed hits both. It prints seconds and the ratio Ray / in process per method; the
goal is at most 1.10. No assertion: the figures are the result. Without --data it prepares
digits-hard, and without --original it trains the original in process first (about a minute).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from pipeline.data.local import load_sources
from pipeline.methods import REGISTRY, create_method
from pipeline.methods.base import UnlearnData
from pipeline.methods.harness import unlearn_data

FORGET, SEED = "random:0.1", 3407
GOAL = 1.10


def multi_epoch_methods() -> list[str]:
    return [name for name in REGISTRY if int(create_method(name, log=None).config.get("epochs", 1)) > 1]


def train_original(data: str, out: str) -> str:
    """The original model, trained in process on all of train with the `retrain` method's recipe."""
    from pipeline.data.shards import read_meta
    from pipeline.models import ModelSpec, build_model, save_checkpoint

    meta = read_meta(data)
    sources, _ = load_sources(data, spec=FORGET, seed=SEED)
    spec = ModelSpec(name="cnn", num_classes=meta.num_classes, channels=meta.channels, image_size=meta.height,
                     mean=meta.mean or [0.5], std=meta.std or [0.25])
    torch.manual_seed(0)
    model = build_model(spec)
    create_method("retrain", seed=0, log=None).unlearn(
        model, None, UnlearnData(forget=sources["forget"], retain=sources["train"]), torch.device("cpu"))
    uri = f"{out}/original.pt"
    save_checkpoint(model, spec, uri)
    return uri


def data_and_original(data: str | None, original: str | None, scratch: str) -> tuple[str, str]:
    """The given data and original, or digits-hard prepared and an original trained in `scratch`."""
    if data is None:
        from pipeline.data.converters import prepare

        data = f"{scratch}/digits-hard"
        prepare("digits-hard", data, seed=0)
    return data, original or train_original(data, scratch)


def in_process_seconds(data: str, original: str, methods: list[str]) -> dict[str, float]:
    from pipeline.models import load_checkpoint

    sources, _ = load_sources(data, spec=FORGET, seed=SEED, verify=False)
    reference = load_checkpoint(original)[0]
    seconds = {}
    for name in methods:
        torch.manual_seed(SEED)
        method = create_method(name, seed=SEED, log=None)
        model = copy.deepcopy(reference)
        report = method.unlearn(model, reference, unlearn_data(sources, method, SEED), torch.device("cpu"))
        seconds[name] = report.unlearn_seconds
    return seconds


def in_fresh_process(data: str, original: str, methods: list[str], threads: int, out: str) -> dict[str, float]:
    subprocess.run([sys.executable, "-m", "benchmarks.ray_overhead", "--data", data, "--original", original,
                    "--methods", *methods, "--threads", str(threads), "--in-process-only", out], check=True)
    with open(out) as handle:
        return json.load(handle)


def ray_seconds(data: str, original: str, methods: list[str], threads: int, out: str) -> dict[str, float]:
    from pipeline.runs.spec import DataSpec, MethodRun, RayResources, RunSpec
    from pipeline.runs.unlearn import unlearn

    spec = RunSpec(data=DataSpec(data, verify=False), original=original, runs=tuple(MethodRun(name) for name in methods),
                   out=out, forget=FORGET, seed=SEED, floor_draws=0,
                   ray=RayResources(workers=1, cpus_per_worker=float(threads), max_failures=0))
    records = unlearn(spec)
    return {record.method: record.unlearn_seconds for record in records}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="shard dataset URI (default: digits-hard, prepared into a temp folder)")
    p.add_argument("--original", help="original checkpoint (default: trained here in process)")
    p.add_argument("--methods", nargs="+", help="default: every method with more than one epoch")
    p.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--in-process-only", metavar="OUT", help=argparse.SUPPRESS)  # one in-process round, to OUT
    args = p.parse_args(argv)
    methods = args.methods or multi_epoch_methods()
    unknown = sorted(set(methods) - set(REGISTRY))
    if unknown:
        p.error(f"unknown method(s) {unknown}; known: {', '.join(REGISTRY)}")
    torch.set_num_threads(args.threads)
    if args.in_process_only:
        with open(args.in_process_only, "w") as handle:
            json.dump(in_process_seconds(args.data, args.original, methods), handle)
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        data, original = data_and_original(args.data, args.original, scratch)
        rounds = {"in_process": [], "ray": []}
        for repeat in range(args.repeats):
            started = time.perf_counter()
            rounds["in_process"].append(in_fresh_process(data, original, methods, args.threads,
                                                         f"{scratch}/in-process-{repeat}.json"))
            rounds["ray"].append(ray_seconds(data, original, methods, args.threads, f"{scratch}/ray-{repeat}"))
            print(f"round {repeat + 1}/{args.repeats} done in {time.perf_counter() - started:.0f} s", flush=True)
    medians = {side: {name: statistics.median(r[name] for r in runs) for name in methods}
               for side, runs in rounds.items()}
    print(f"\n{'method':<12}{'in process s':>14}{'Ray Train s':>13}{'Ray / in process':>18}   (goal <= {GOAL:.2f}, "
          f"{args.threads} threads, median of {args.repeats})")
    for name in methods:
        ratio = medians["ray"][name] / medians["in_process"][name]
        print(f"{name:<12}{medians['in_process'][name]:>14.2f}{medians['ray'][name]:>13.2f}{ratio:>18.2f}"
              f"{'' if ratio <= GOAL else '   above goal'}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"threads": args.threads, "repeats": args.repeats, "rounds": rounds, "medians": medians}, handle,
                      indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
