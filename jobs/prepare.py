"""`unlearn prepare --source SRC --out URI`: convert a source into Parquet shards with `_meta.json`.

Shards are built in parallel (--procs) and the conversion resumes: rerunning a stopped command keeps
the shards already written and verified (recorded under URI/_prepare/) and writes only the rest."""

from __future__ import annotations

import argparse
import sys
import time

from pipeline.data.converters import SyntheticSpec, prepare
from jobs.paths import absolute_args
from pipeline.errors import ConfigError

# jobs.common is imported inside main: its imports (Ray Data, torch) take seconds, and prepare's worker
# processes, started by spawn, import this module again before building a single shard.


def parser() -> argparse.ArgumentParser:
    from jobs.common import add_endpoint_flag

    p = argparse.ArgumentParser(prog="unlearn prepare", description=__doc__)
    p.add_argument("--source", required=True,
                   help="digits | digits-hard | synthetic (square patterns at --image-size) | synthetic-imagenet "
                        "(ImageNet-shaped ~110 KB JPEGs of varied size) | imagefolder:PATH (train/<class>/*, "
                        "val/<class>/*)")
    p.add_argument("--out", required=True, help="output URI (local path or s3://bucket/prefix)")
    p.add_argument("--seed", type=int, default=0, help="fixes the stored train/val/test split, the row order and any generation")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    p.add_argument("--shard-mb", type=float, default=256, help="target shard size in MB")
    p.add_argument("--procs", type=int, default=None,
                   help="worker processes building shards (default: one per CPU)")
    add_endpoint_flag(p)
    p.add_argument("--image-size", type=int, default=None,
                   help="the model's input size: the stored size for synthetic (default 64), the crop for "
                        "synthetic-imagenet (default 224); for imagefolder: images sharing one square size keep "
                        "it by default (resized whole to this size when given, never cropped), images of several "
                        "sizes take the ImageNet transform at this size (default 224)")
    g = p.add_argument_group("synthetic and synthetic-imagenet")
    g.add_argument("--classes", type=int, default=10)
    g.add_argument("--train-per-class", type=int, default=20)
    g.add_argument("--val-per-class", type=int, default=5)
    g.add_argument("--test-per-class", type=int, default=5)
    return p


def main(argv: list[str] | None = None) -> int:
    from jobs.common import apply_endpoint
    from pipeline.train.console import log

    args = absolute_args(parser().parse_args(argv), paths=("out",), specs=("source",))
    if args.procs is not None and args.procs < 1:
        raise ConfigError(f"--procs must be 1 or more, not {args.procs}")
    if args.shard_mb <= 0:
        raise ConfigError(f"--shard-mb must be positive, not {args.shard_mb}")
    if args.image_size is not None and args.image_size < 1:
        raise ConfigError(f"--image-size must be 1 or more, not {args.image_size}")
    apply_endpoint(args)
    synthetic = SyntheticSpec(args.classes, args.image_size, args.train_per_class, args.val_per_class,
                              args.test_per_class)
    started = time.perf_counter()
    meta = prepare(args.source, args.out, seed=args.seed, synthetic=synthetic, overwrite=args.overwrite,
                   shard_bytes=int(args.shard_mb * 1024**2), procs=args.procs, progress=log)
    log(f"prepared {meta.name} at {args.out}: {meta.counts} in {len(meta.shards)} shard(s), "
        f"{meta.num_classes} classes, input {meta.height}x{meta.width}x{meta.channels} by {meta.resize} "
        f"({time.perf_counter() - started:.1f} s in all)")
    log(input_line(meta))
    warning = other_sizes(args.out, meta)
    if warning:
        log(warning)
    return 0


def other_sizes(uri: str, meta) -> str | None:
    """The size was chosen from a probe of the images; with their own size kept (squash), say how many stored
    images have another size: they are resized whole to it, their aspect changed (every row stores its size)."""
    if meta.resize != "squash" or not str(meta.extra.get("source", "")).startswith("imagefolder:"):
        return None
    from pipeline.data.shards import read_table

    table = read_table(uri, meta, ["sample_id", "width", "height"]).to_pylist()
    odd = [row for row in table if (row["width"], row["height"]) != (meta.width, meta.height)]
    if not odd:
        return None
    first = odd[0]
    return (f"WARNING: {len(odd)} of {len(table)} images are not {meta.width}x{meta.height} (e.g. {first['sample_id']}, "
            f"{first['width']}x{first['height']}): the model sees them resized whole to {meta.width}x{meta.height}, "
            f"their aspect changed. Make them one size, or prepare again with --overwrite after removing them")

def input_line(meta) -> str:
    """The input size and normalisation the training jobs will use, and why (ImageFolder: the probe's choice)."""
    how = {"squash": "whole images, no crop", "shorter_side_crop": "shorter side resized, centre crop"}[meta.resize]
    reason = meta.extra.get("input_choice")
    return (f"model input {meta.height}x{meta.width}, {meta.channels} channel(s), {how}; normalisation mean "
            f"{meta.mean} std {meta.std}" + (f" ({reason})" if reason else ""))


if __name__ == "__main__":
    from jobs.common import run_main

    sys.exit(run_main(main))
