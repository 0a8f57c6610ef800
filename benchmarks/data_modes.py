"""Benchmark: `--data-mode stream` vs `memory` for multi-epoch methods, side by side in one command.

    python -m benchmarks.data_modes [--data URI] [--s3-endpoint URL] [--original CKPT]
                                    [--methods lotus scrub] [--workers 2] [--cache-mb 4096]

Runs the methods through Ray Train (`unlearn run`'s path, all methods in one fit per mode) once
with every set streamed from the shards by Ray Data and once with the driver's decoded copy in
Ray's object store, and prints each method's unlearning time (its own timed region), the ratio
stream / memory (goal: at most 1.5), the seconds the workers waited for input, and whether both
modes produced the same weights (they should: same seed, same batches). `--cache-mb 0` shows the
cost of streaming every epoch. Without --data it prepares digits-hard locally; without --original
it trains the original first (benchmarks.ray_overhead.train_original). No assertion: the figures
are the result.
"""

from __future__ import annotations

import argparse
import tempfile

from benchmarks.ray_overhead import FORGET, SEED, data_and_original
from jobs.common import add_endpoint_flag

GOAL = 1.5


def run_mode(data: str, original: str, methods: list[str], mode: str, args, out: str) -> dict:
    from pipeline.runs.spec import DataSpec, MethodRun, RayResources, RunSpec
    from pipeline.runs.unlearn import unlearn

    spec = RunSpec(data=DataSpec(data, verify=False, mode=mode, cache_mb=args.cache_mb, s3_endpoint=args.s3_endpoint),
                   original=original, runs=tuple(MethodRun(name) for name in methods), out=out, forget=FORGET,
                   seed=SEED, floor_draws=0, ray=RayResources(workers=args.workers, max_failures=0))
    records = unlearn(spec)
    return {r.method: {"seconds": r.unlearn_seconds, "wait": r.input_wait.get("unlearn"), "sha256": r.checkpoint_sha256}
            for r in records}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="shard dataset URI (default: digits-hard, prepared into a temp folder)")
    add_endpoint_flag(p)
    p.add_argument("--original", help="original checkpoint (default: trained here first)")
    p.add_argument("--methods", nargs="+", default=["lotus", "scrub"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache-mb", type=float, default=4096)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        data, original = data_and_original(args.data, args.original, scratch)
        results = {mode: run_mode(data, original, args.methods, mode, args, f"{scratch}/{mode}")
                   for mode in ("memory", "stream")}
    print(f"\n{'method':<10}{'memory s':>10}{'stream s':>10}{'stream/memory':>15}{'stream wait s':>15}  same weights"
          f"   (goal <= {GOAL}, {args.workers} workers, cache {args.cache_mb:g} MB)")
    for name in args.methods:
        memory, stream = results["memory"][name], results["stream"][name]
        same = "yes" if memory["sha256"] == stream["sha256"] else "NO"
        print(f"{name:<10}{memory['seconds']:>10.2f}{stream['seconds']:>10.2f}"
              f"{stream['seconds'] / memory['seconds']:>15.2f}{stream['wait'] or 0:>15.2f}  {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
