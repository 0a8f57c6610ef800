"""`unlearn demo` (what `make demo` runs): digits-hard end to end through Ray on this machine.

The benchmark of configs/demo.yaml under --out: prepares the embedded digits-hard shards, trains the
original model (all of train) and the retrained gold model (D_r of random:0.1), runs every unlearning
method once in one Ray Train fit, then prints the results table and the path of the HTML report.
Rerunning reuses the prepared data and both models and writes a new run beside the previous ones.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from jobs import bench
from jobs.common import add_verbose_flag, apply_endpoint, run_main
from jobs.paths import absolute_args
from pipeline import storage
from pipeline.runs.spec import RayResources
from pipeline.train.console import log
from pipeline.train.ray_address import add_address_flag

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="where data, models and runs go (local or s3://)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers")
    p.add_argument("--methods", nargs="+", help="only these methods (default: every method in the config)")
    p.add_argument("--config", default=str(DEMO_CONFIG), help="the demo's benchmark config")
    add_address_flag(p)
    add_verbose_flag(p)
    return p


def demo_config(args: argparse.Namespace) -> dict:
    """The demo config with everything placed under --out: data and models are shared by reruns."""
    config = bench.load_config(args.config, methods=args.methods)
    config["out"] = args.out
    config["data"]["uri"] = storage.join(args.out, "data")
    config["models"] = storage.join(args.out, "models")
    config["ray"]["workers"] = args.workers
    return config


def main(argv: list[str] | None = None) -> int:
    args = absolute_args(parser().parse_args(argv), paths=("out", "config"))
    RayResources(workers=args.workers).check()  # before the data and the models, which take minutes
    started = time.perf_counter()
    apply_endpoint(args)
    config = demo_config(args)
    status = bench.run_bench(config, bench.default_run_uri(config))
    log(f"demo finished in {time.perf_counter() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(run_main(main))
