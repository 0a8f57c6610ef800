"""`unlearn eval`: evaluate a model through Ray (accuracies on D_f/D_r/D_test/D_u, MIA, RF-JSD; JSD and Avg Gap
with --gold) in one pass per model per split, print the metrics and append a result record to --out.

It also records RF-JSD's sampling floor: the RF-JSD of the original on seeded draws from D_test with D_f's
class counts, what a model that never saw D_f scores by sampling alone (pipeline/metrics/floor.py). Where no
retrained model exists (ImageNet) it is the reference an RF-JSD value is read against, not 0."""

from __future__ import annotations

import argparse
import sys

from jobs.common import add_data_flags, add_floor_flag, add_ray_flags, apply_endpoint, data_spec, ray_resources, run_main
from jobs.paths import absolute_args
from pipeline.runs.spec import EvalSpec


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn eval", description=__doc__)
    add_data_flags(p)
    add_ray_flags(p)
    p.add_argument("--model", required=True, help="checkpoint to evaluate")
    p.add_argument("--original", help="the model before unlearning (RF-JSD's reference on D_u; default --model)")
    p.add_argument("--gold", help="retrained model: adds JSD and Avg Gap")
    p.add_argument("--forget", default="random:0.1")
    p.add_argument("--seed", type=int, default=3407)
    p.add_argument("--label", default="eval", help="the method name to record (e.g. the method that made --model)")
    add_floor_flag(p)
    p.add_argument("--out", required=True, help="run URI for the result record")
    return p


def eval_spec(args: argparse.Namespace) -> EvalSpec:
    return EvalSpec(data=data_spec(args), model=args.model, out=args.out, original=args.original, gold=args.gold,
                    forget=args.forget, seed=args.seed, label=args.label, floor_draws=args.floor_draws,
                    ray=ray_resources(args))


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line parsed, its local paths made absolute (the workers run in folders of their own)."""
    return absolute_args(parser().parse_args(argv), paths=("data", "model", "original", "gold", "out"),
                         specs=("forget",))


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    apply_endpoint(args)
    spec = eval_spec(args)
    spec.check()  # flag errors first: the evaluation code below imports torch and Ray, seconds on a small machine
    from pipeline.runs.evaluate import evaluate

    evaluate(spec)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
