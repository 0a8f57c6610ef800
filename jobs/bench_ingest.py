"""`unlearn bench-ingest --data URI`: images/s delivered as training batches, Ray Data vs a plain DataLoader.

Both read the same Parquet row groups with the same decode (the dataset's `resize` to the model's input
size, uint8 batches of 64): (a) the project's stream path, Ray Data feeding `--workers` Ray Train workers,
and (b) a torch DataLoader with `--processes` worker processes (default: this machine's cores, what Ray
Data's decode tasks get too). The DataLoader runs first, before Ray starts, so neither competes with the
other. Prints images/s per pass, the ratio Ray / DataLoader, and peak memory of each (this process, the
worker processes, Ray's object store). A benchmark, not a test: the figures are the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from jobs.common import add_endpoint_flag, apply_endpoint, run_main
from jobs.paths import absolute_args
from pipeline import storage
from pipeline.data.shards import read_meta
from pipeline.errors import ConfigError
from pipeline.train.console import log
from pipeline.train.ray_address import add_address_flag

# The readers and the Ray path (torch, Ray) are imported inside the functions that use them, after the flags
# are checked: `--help` and a flag error answer at once.


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn bench-ingest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="shard dataset URI (local path or s3://bucket/prefix)")
    add_endpoint_flag(p)
    p.add_argument("--split", default="train", choices=("train", "val", "test"), help="the stored split to read")
    p.add_argument("--image-size", type=int, help="model input size (default: the dataset's hint)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers reading the stream")
    p.add_argument("--processes", type=int, help="DataLoader worker processes (default: the CPU cores)")
    p.add_argument("--passes", type=int, default=3, help="passes (epochs) per path; the first is reported apart")
    p.add_argument("--no-shuffle", action="store_true", help="read in file order (training shuffles)")
    p.add_argument("--skip-dataloader", action="store_true", help="measure the Ray path only")
    p.add_argument("--out", help="also write the figures as JSON to this URI")
    add_address_flag(p)
    return p


def measure_dataloader(decode, processes: int, passes: int):
    from pipeline.train.ingest import IngestResult, MemorySampler, dataloader_passes

    with MemorySampler(ray_processes=False) as memory:
        timings = dataloader_passes(decode, processes, passes)
    return memory.into(IngestResult(timings))


def measure_ray(units, meta, image_size: int, args):
    from pipeline.train.datasets import DataPlan, SetPlan
    from pipeline.train.ingest import IngestResult, MemorySampler, PassTiming, ray_worker_loop
    from pipeline.train.runner import init_ray, run_trainer

    init_ray(args.workers)
    plan = DataPlan({"train": SetPlan(tuple(units))}, meta.channels, image_size, meta.resize)
    config = {"passes": args.passes, "shuffle": not args.no_shuffle, "seed": 0, "data_plan": plan}
    with tempfile.TemporaryDirectory() as scratch, MemorySampler(ray_processes=True) as memory:
        timings = run_trainer(config, scratch, "bench-ingest", workers=args.workers, loop=ray_worker_loop)
    return memory.into(IngestResult([PassTiming(t["images"], t["seconds"]) for t in timings]))


def table(results: dict) -> list[str]:
    lines = [f"{'path':<12}{'pass 1 img/s':>14}{'later img/s':>13}{'driver MB':>11}{'workers MB':>12}"
             f"{'store MB':>10}{'spilled MB':>12}"]
    for name, r in results.items():
        store = f"{r.peak_object_store_mb:.0f}" if r.peak_object_store_mb is not None else "-"
        spilled = f"{r.spilled_mb:.0f}" if r.spilled_mb is not None else "-"
        lines.append(f"{name:<12}{r.passes[0].images_per_second:>14.0f}{r.steady_images_per_second:>13.0f}"
                     f"{r.peak_driver_mb:>11.0f}{r.peak_workers_mb:>12.0f}{store:>10}{spilled:>12}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = absolute_args(parser().parse_args(argv), paths=("data", "out"))
    if args.passes < 1 or args.workers < 1 or (args.processes is not None and args.processes < 0):
        raise ConfigError("--passes and --workers must be at least 1, --processes at least 0")
    apply_endpoint(args)
    from pipeline.train.datasets import ReadAndDecode, RowSelector, Selection, read_layout, read_units
    from pipeline.train.ingest import cpu_count

    meta = read_meta(args.data)
    image_size = args.image_size or meta.height
    layout = read_layout(args.data, meta)
    units = read_units(layout, *RowSelector(Selection(stored_split=args.split), frozenset()).mask(layout.ids,
                                                                                                 layout.splits))
    images = sum(len(u.rows) for u in units)
    if not images:
        raise ConfigError(f"{args.data} has no {args.split} images")
    processes = cpu_count() if args.processes is None else args.processes
    log(f"bench-ingest: {images} {args.split} images of {meta.name} in {len(units)} row groups, "
        f"{image_size} px ({meta.resize}), {args.passes} passes; DataLoader: {processes} processes, "
        f"Ray: {args.workers} Train worker(s)")
    results = {}
    if not args.skip_dataloader:
        decode = ReadAndDecode(units, meta.channels, image_size, meta.resize, forget_flag=False)
        results["dataloader"] = measure_dataloader(decode, processes, args.passes)
    results["ray_data"] = measure_ray(units, meta, image_size, args)
    for line in table(results):
        log(line)
    if "dataloader" in results:
        ray_rate, loader = results["ray_data"], results["dataloader"]
        log(f"Ray Data / DataLoader: {ray_rate.steady_images_per_second / loader.steady_images_per_second:.2f} "
            f"(later passes), {ray_rate.passes[0].images_per_second / loader.passes[0].images_per_second:.2f} "
            f"(pass 1)")
    if args.out:
        body = {"data": args.data, "images": images, "image_size": image_size, "workers": args.workers,
                "processes": processes, "passes": args.passes,
                "results": {name: {**vars(r), "passes": [vars(p) for p in r.passes],
                                   "steady_images_per_second": r.steady_images_per_second}
                            for name, r in results.items()}}
        storage.write_text(args.out, json.dumps(body, indent=2))
        log(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
