"""`unlearn prepare --source SRC --out URI`: convert a source into Parquet shards with `_meta.json`."""

from __future__ import annotations

import argparse
import sys
import time

from jobs.common import apply_endpoint, log, run_main
from pipeline.data.converters import SyntheticSpec, prepare


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn prepare", description=__doc__)
    p.add_argument("--source", required=True,
                   help="digits | digits-hard | synthetic | imagefolder:PATH (train/<class>/*, val/<class>/*)")
    p.add_argument("--out", required=True, help="output URI (local path or s3://bucket/prefix)")
    p.add_argument("--seed", type=int, default=0, help="fixes the stored train/val/test split and any generation")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    p.add_argument("--shard-mb", type=int, default=256, help="target shard size in MB")
    p.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (default: $AWS_ENDPOINT_URL)")
    g = p.add_argument_group("synthetic")
    g.add_argument("--classes", type=int, default=10)
    g.add_argument("--image-size", type=int, default=64)
    g.add_argument("--train-per-class", type=int, default=20)
    g.add_argument("--val-per-class", type=int, default=5)
    g.add_argument("--test-per-class", type=int, default=5)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    apply_endpoint(args)
    synthetic = SyntheticSpec(args.classes, args.image_size, args.train_per_class, args.val_per_class,
                              args.test_per_class)
    started = time.perf_counter()
    meta = prepare(args.source, args.out, seed=args.seed, synthetic=synthetic, overwrite=args.overwrite,
                   shard_bytes=args.shard_mb * 1024**2, progress=lambda n: log(f"  {n} images written"))
    log(f"prepared {meta.name} at {args.out}: {meta.counts} in {len(meta.shards)} shard(s), "
        f"{meta.num_classes} classes, {meta.height}x{meta.width}x{meta.channels} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
