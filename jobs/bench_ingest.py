"""`unlearn bench-ingest --data URI`: images/s delivered as training batches, Ray Data vs a plain DataLoader.

Both read the same Parquet row groups with the same decode (the dataset's `resize` to the model's input
size) and deliver the same shuffled uint8 training batches of 64 through the same shuffle windows: (a) the
project's stream path, Ray Data feeding `--workers` Ray Train workers, and (b) a torch DataLoader with
`--processes` worker processes (default: this machine's cores, what Ray Data's decode tasks get too). The
decode-once cache is off, so every pass reads and decodes: what every epoch costs on data bigger than the
cache (ImageNet-1k). The DataLoader runs first, before Ray starts, so neither competes with the other.

Prints the work per image (read, decode; one thread), each path's start-up apart from its streaming rate
(Ray's once per job: Ray, the Train worker, the data workers; and every pass's time to its first batch),
images/s per pass, where a Ray Data pass's time goes (read tasks' wall and CPU time; the training worker
waiting for blocks, fetching and formatting them), the ratios Ray / DataLoader, and peak memory (this
process, the worker processes, Ray's object store). A benchmark, not a test: the figures are the result.
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
    p.add_argument("--between-passes", type=float, default=0.0, metavar="SECONDS",
                   help="idle seconds after each pass, outside its time: an epoch's evaluation and checkpoint "
                        "(default 0: passes back to back)")
    p.add_argument("--no-read-ahead", action="store_true",
                   help="do not read the next pass's first units while a pass ends (to measure what that buys)")
    p.add_argument("--skip-dataloader", action="store_true", help="measure the Ray path only")
    p.add_argument("--out", help="also write the figures as JSON to this URI")
    add_address_flag(p)
    return p


def measure_dataloader(units, meta, image_size: int, processes: int, args):
    from pipeline.train.ingest import IngestResult, MemorySampler, dataloader_passes

    with MemorySampler(ray_processes=False) as memory:
        timings = dataloader_passes(units, meta.channels, image_size, meta.resize, processes, args.passes,
                                    between_passes=args.between_passes)
    return memory.into(IngestResult(timings))


def measure_ray(units, meta, image_size: int, args):
    """The stream path, with its start-up (Ray, the Train worker, the data workers' imports) timed apart."""
    import time

    from pipeline.train.datasets import DataPlan, SetPlan
    from pipeline.train.ingest import IngestResult, MemorySampler, PassTiming, ray_worker_loop
    from pipeline.train.runner import init_ray, run_trainer

    started = time.time()
    init_ray(args.workers)
    plan = DataPlan({"train": SetPlan(tuple(units))}, meta.channels, image_size, meta.resize)
    config = {"passes": args.passes, "seed": 0, "data_plan": plan, "read_ahead": not args.no_read_ahead,
              "between_passes": args.between_passes}
    with tempfile.TemporaryDirectory() as scratch, MemorySampler(ray_processes=True) as memory:
        figures = run_trainer(config, scratch, "bench-ingest", workers=args.workers, loop=ray_worker_loop)
    result = IngestResult([PassTiming(**timing) for timing in figures["passes"]],
                          startup_seconds=figures["first_pass_at"] - started)
    return memory.into(result)


def table(results: dict) -> list[str]:
    lines = [f"{'path':<12}{'start-up s':>11}{'to 1st batch s':>15}{'pass 1 img/s':>13}{'streaming img/s':>16}"
             f"{'later img/s':>12}{'driver MB':>10}{'workers MB':>11}{'store MB':>9}{'spilled MB':>11}"]
    for name, r in results.items():
        startup = f"{r.startup_seconds:.1f}" if r.startup_seconds is not None else "-"
        store = f"{r.peak_object_store_mb:.0f}" if r.peak_object_store_mb is not None else "-"
        spilled = f"{r.spilled_mb:.0f}" if r.spilled_mb is not None else "-"
        to_first = sum(p.first_batch_seconds for p in r.passes) / len(r.passes)
        lines.append(f"{name:<12}{startup:>11}{to_first:>15.2f}{r.passes[0].images_per_second:>13.0f}"
                     f"{r.streaming_images_per_second:>16.0f}{r.steady_images_per_second:>12.0f}"
                     f"{r.peak_driver_mb:>10.0f}{r.peak_workers_mb:>11.0f}{store:>9}{spilled:>11}")
    return lines


def ray_stage_lines(result, costs: dict) -> list[str]:
    """Where a Ray Data pass's time goes (mean over passes), against the work measured in one thread here."""
    stages = [p.stages for p in result.passes if p.stages]
    if not stages:
        return ["Ray Data's per-stage statistics are not available in this Ray"]
    mean = {key: sum(s[key] for s in stages) / len(stages) for key in stages[0]}
    images = result.passes[0].images
    return [f"Ray Data per pass (mean of {len(stages)}): {mean['read_tasks']:.0f} read tasks, "
            f"{mean['read_task_wall']:.2f} s wall and {mean['read_task_cpu']:.2f} s CPU in all "
            f"({1000 * mean['read_task_cpu'] / images:.2f} ms CPU per image, against read + decode "
            f"{costs['read_ms'] + costs['decode_ms']:.2f} ms in one thread here)",
            f"  training worker blocked: {mean['waiting_for_production']:.2f} s waiting for blocks to be produced, "
            f"{mean['fetching_blocks']:.2f} s fetching them, {mean['formatting']:.2f} s formatting"]


def startup_line(ray_result, rate: float) -> str:
    """Start-up and from how many images on it is under 1 % of a job's time at the streaming rate."""
    per_pass = sum(p.first_batch_seconds for p in ray_result.passes) / len(ray_result.passes)
    once = ray_result.startup_seconds or 0.0
    return (f"Ray start-up: {once:.1f} s once per job (Ray, the Train worker, the data workers) and {per_pass:.2f} s "
            f"to a pass's first batch; under 1 % of a job from {100 * once * rate:,.0f} images on "
            f"(under 1 % of a pass from {100 * per_pass * rate:,.0f} images per pass) at {rate:.0f} img/s")


def main(argv: list[str] | None = None) -> int:
    args = absolute_args(parser().parse_args(argv), paths=("data", "out"))
    if args.passes < 1 or args.workers < 1 or (args.processes is not None and args.processes < 0):
        raise ConfigError("--passes and --workers must be at least 1, --processes at least 0")
    if not args.between_passes >= 0:
        raise ConfigError(f"--between-passes must be 0 or more seconds, not {args.between_passes}")
    apply_endpoint(args)
    from pipeline.train.datasets import RowSelector, Selection, read_layout, read_units
    from pipeline.train.ingest import BATCH_SIZE, cpu_count, unit_costs

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
        f"{image_size} px ({meta.resize}), {args.passes} passes, shuffled training batches of {BATCH_SIZE}, "
        f"decode-once cache off (every pass reads and decodes, as every epoch on data bigger than the cache); "
        f"DataLoader: {processes} processes, Ray: {args.workers} Train worker(s)")
    costs = unit_costs(units, meta.channels, image_size, meta.resize)
    log(f"work per image, one thread here: read {costs['read_ms']:.2f} ms, decode {costs['decode_ms']:.2f} ms "
        f"({costs['images']} images)")
    results = {}
    if not args.skip_dataloader:
        results["dataloader"] = measure_dataloader(units, meta, image_size, processes, args)
    results["ray_data"] = measure_ray(units, meta, image_size, args)
    for line in table(results) + ray_stage_lines(results["ray_data"], costs):
        log(line)
    ray_result = results["ray_data"]
    log(startup_line(ray_result, ray_result.streaming_images_per_second))
    if "dataloader" in results:
        loader = results["dataloader"]
        log(f"Ray Data / DataLoader: {ray_result.streaming_images_per_second / loader.streaming_images_per_second:.2f}"
            f" streaming (every pass after its first batch), "
            f"{ray_result.passes[0].images_per_second / loader.passes[0].images_per_second:.2f} pass 1, "
            f"{ray_result.steady_images_per_second / loader.steady_images_per_second:.2f} later passes")
    if args.out:
        body = {"data": args.data, "images": images, "image_size": image_size, "workers": args.workers,
                "processes": processes, "passes": args.passes, "work_per_image_ms": costs,
                "results": {name: {**vars(r), "passes": [vars(p) for p in r.passes],
                                   "steady_images_per_second": r.steady_images_per_second,
                                   "streaming_images_per_second": r.streaming_images_per_second}
                            for name, r in results.items()}}
        storage.write_text(args.out, json.dumps(body, indent=2))
        log(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
