"""`unlearn eval`: evaluate a model through Ray (accuracies on D_f/D_r/D_test/D_u, MIA, RF-JSD; JSD and Avg Gap
with --gold) in one pass per model per split, print the metrics and append a result record to --out.

It also records RF-JSD's sampling floor: the RF-JSD of the original on seeded draws from D_test with D_f's
class counts, what a model that never saw D_f scores by sampling alone (pipeline/metrics/floor.py). Where no
retrained model exists (ImageNet) it is the reference an RF-JSD value is read against, not 0."""

from __future__ import annotations

import argparse
import sys

from jobs.common import (Phases, add_data_flags, add_floor_flag, add_ray_flags, apply_endpoint, check_model_fits_data,
                         check_run_arguments, open_dataset, plan_floor, run_main, versions)
from jobs.unlearn import EVALUATE, print_metrics
from pipeline.data.splits import make_splits
from pipeline.models import load_checkpoint
from pipeline.results.records import ResultRecord, append_record, new_run_id
from pipeline.train.datasets import plan_sets
from pipeline.train.runner import absolute, init_ray, run_trainer


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


def evaluate(args: argparse.Namespace) -> ResultRecord:
    apply_endpoint(args)
    check_run_arguments(args)
    phases = Phases()
    meta, index = open_dataset(args)
    splits = make_splits(index, args.forget, args.seed, meta.num_classes)
    _, spec, _ = load_checkpoint(args.model)
    check_model_fits_data(spec, meta, args.model, args.data)
    floor_plan = plan_floor(index, splits, meta.num_classes, args.floor_draws, args.seed)
    init_ray(args.workers, args.cpus_per_worker)
    phases.lap("startup")
    plan = plan_sets(args.data, meta, splits, sorted(set(EVALUATE.values())), spec.image_size,
                     mode=args.data_mode)
    loop_config = {
        "method": "original", "seed": args.seed, "model_uri": absolute(args.model),
        "original_uri": absolute(args.original or args.model), "gold_uri": absolute(args.gold) if args.gold else None,
        "data_plan": plan, "cache_mb": args.cache_mb, "roles": {"forget": "forget", "retain": "retain_all"},
        "evaluate": EVALUATE, "evaluation": "metrics", "num_classes": meta.num_classes,
        "model_out": absolute(f"{args.out}/evaluated.pt"), "floor_plan": floor_plan,
    }
    phases.lap("data")
    result = run_trainer(loop_config, args.out, name=f"eval-{args.label}-s{args.seed}",
                         workers=args.workers, use_gpu=args.gpus, cpus_per_worker=args.cpus_per_worker,
                         max_failures=args.max_failures)
    phases.lap("run")
    seconds = phases.total()
    seconds["eval"] = result["eval_seconds"]
    record = ResultRecord(
        run_id=new_run_id("eval", args.label, args.seed), kind="eval", method=args.label, dataset=meta.name,
        model=spec.name, seed=args.seed, forget_spec=args.forget,
        config={"data": args.data, "model": args.model, "original": args.original, "gold": args.gold},
        metrics=result["evaluation"], phases=seconds, unlearn_seconds=None, workers=args.workers,
        images={"data": plan.stored_rows, "eval": result["images"]["eval"]},
        input_wait={"eval": result["input_wait"]["eval"]},
        gpus=args.workers if args.gpus else 0, versions=versions(), checkpoint_uri=args.model)
    append_record(args.out, record)
    print_metrics(args.label, result["evaluation"])
    return record


def main(argv: list[str] | None = None) -> int:
    evaluate(parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
