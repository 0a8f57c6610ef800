"""Benchmark: `--data-mode stream` vs `memory` on one dataset, side by side in one Ray session.

    python -m benchmarks.data_modes --data runs/data/digits-hard [--passes 5]

For each mode it times building the unlearning sets (forget, mixed@0.3, test) and
then passes over D_f inside a Ray task (where Train workers read), and prints the
ratios stream / memory. No assertion: the figures are the result.
"""

from __future__ import annotations

import argparse
import statistics
import time

from pipeline.data.shards import read_index, read_meta
from pipeline.data.splits import make_splits
from pipeline.train.datasets import build_datasets
from pipeline.train.runner import init_ray

SETS = ["forget", "mixed@0.3", "test"]


def timed_passes(dataset, passes: int) -> list[float]:
    """Seconds per full pass over the dataset, read inside a Ray task as a Train worker reads its shard."""
    import ray

    @ray.remote(num_cpus=1)
    def read(dataset, passes):
        iterator, seconds = dataset.iterator(), []
        for _ in range(passes):
            started = time.perf_counter()
            for _ in iterator.iter_batches(batch_size=64):
                pass
            seconds.append(time.perf_counter() - started)
        return seconds

    return ray.get(read.remote(dataset, passes))


def measure(uri: str, mode: str, passes: int) -> dict:
    meta = read_meta(uri)
    splits = make_splits(read_index(uri, meta), "random:0.1", 3407, meta.num_classes)
    started = time.perf_counter()
    datasets = build_datasets(uri, meta, splits, SETS, meta.height, [0.3], mode=mode)
    build = time.perf_counter() - started
    seconds = timed_passes(datasets["forget"], passes + 1)
    # The first pass also starts the reading machinery; report it apart from the steady state.
    return {"build": build, "first": seconds[0], "pass": statistics.median(seconds[1:])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="shard dataset URI (e.g. runs/data/digits-hard)")
    p.add_argument("--passes", type=int, default=5)
    args = p.parse_args(argv)
    init_ray()
    results = {mode: measure(args.data, mode, args.passes) for mode in ("stream", "memory")}
    print(f"{'':24}{'stream':>10}{'memory':>10}{'stream/memory':>16}")
    for key, label in (("build", "build sets (s)"), ("first", "first pass over D_f (s)"),
                       ("pass", "later pass, median (s)")):
        stream, memory = results["stream"][key], results["memory"][key]
        print(f"{label:24}{stream:10.3f}{memory:10.3f}{stream / memory:16.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
