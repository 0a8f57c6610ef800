"""`unlearn run`: make a trained model forget a forget set with LoTUS or a baseline, through Ray Data + Ray Train,
then evaluate it (accuracies, MIA, RF-JSD and its sampling floor; JSD and Avg Gap with --gold) and append a
result record to --out."""

from __future__ import annotations

import argparse
import sys

from jobs.common import (add_data_flags, add_floor_flag, add_mlflow_flag, add_overwrite_flag, add_ray_flags,
                         apply_endpoint, check_mlflow, data_spec, method_overrides, ray_resources, run_main, track)
from jobs.paths import absolute_args
from pipeline.methods import REGISTRY
from pipeline.runs.spec import MethodRun, RunSpec


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn run", description=__doc__,
                                epilog="--family diffusion: class unlearning in a diffusion model (SAFEMax); "
                                       "`unlearn run --family diffusion --help` lists its options")
    add_family_flag(p)
    add_data_flags(p)
    add_ray_flags(p)
    p.add_argument("--original", required=True, help="checkpoint of the trained model (local or s3://)")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(REGISTRY)}")
    p.add_argument("--forget", default="random:0.1", help="random:F | class:C1,C2 | ids:FILE | limited:F/R")
    p.add_argument("--seed", type=int, default=3407)
    p.add_argument("--gold", help="retrained model checkpoint: adds JSD and Avg Gap")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="method settings, e.g. --set lotus.alpha=2 --set lotus.lr=1e-4")
    p.add_argument("--out", required=True, help="run URI: unlearned checkpoint, epoch checkpoints, result records")
    p.add_argument("--name", help="run name (default: METHOD-sSEED); a rerun with the same name and settings resumes")
    add_mlflow_flag(p)
    add_overwrite_flag(p)
    add_floor_flag(p)
    return p


FAMILIES = ("classifier", "diffusion")


def add_family_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", choices=FAMILIES, default="classifier",
                        help="classifier (default): image classifiers; diffusion: class-conditional DDPMs (SAFEMax)")


def family(argv: list[str]) -> str:
    p = argparse.ArgumentParser(add_help=False)
    add_family_flag(p)
    return p.parse_known_args(argv)[0].family


def run_spec(args: argparse.Namespace) -> RunSpec:
    """The command line as a RunSpec (one method)."""
    return RunSpec(data=data_spec(args), original=args.original,
                   runs=(MethodRun(args.method, method_overrides(args.method, args.set)),), out=args.out,
                   forget=args.forget, seed=args.seed, gold=args.gold, name=args.name, overwrite=args.overwrite,
                   floor_draws=args.floor_draws, ray=ray_resources(args))


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line parsed, its local paths made absolute (the workers run in folders of their own)."""
    return absolute_args(parser().parse_args(argv), paths=("data", "original", "gold", "out"), specs=("forget",))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if family(argv) == "diffusion":
        from jobs import diffusion

        return diffusion.main(argv)
    args = arguments(argv)
    apply_endpoint(args)
    check_mlflow(args.mlflow, args.out)
    spec = run_spec(args)
    spec.check()  # flag errors first: the run's code below imports torch and Ray, seconds on a small machine
    from pipeline.runs.unlearn import unlearn

    track(args.mlflow, args.out, unlearn(spec))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
