"""Evaluating a model through Ray in one pass per model per split: accuracies, MIA, RF-JSD and its floor;
JSD and Avg Gap with a gold model."""

from __future__ import annotations

from pipeline.data.splits import make_splits
from pipeline.models import load_checkpoint
from pipeline.results.records import ResultRecord, append_record, new_run_id
from pipeline.runs.common import (Phases, check_model_fits_data, check_output_uri, open_dataset, plan_floor,
                                  use_endpoint, versions)
from pipeline.runs.spec import EvalSpec
from pipeline.runs.unlearn import EVALUATE, print_metrics
from pipeline.train.datasets import plan_sets
from pipeline.train.runner import absolute, init_ray, run_trainer


def evaluate(spec: EvalSpec) -> ResultRecord:
    spec.check()
    use_endpoint(spec.data.s3_endpoint)
    check_output_uri(spec.out)
    phases = Phases()
    meta, index = open_dataset(spec.data)
    splits = make_splits(index, spec.forget, spec.seed, meta.num_classes)
    _, model_spec, _ = load_checkpoint(spec.model)
    check_model_fits_data(model_spec, meta, spec.model, spec.data.uri)
    floor_plan = plan_floor(index, splits, meta.num_classes, spec.floor_draws, spec.seed)
    init_ray(spec.ray.workers, spec.ray.cpus_per_worker)
    phases.lap("startup")
    plan = plan_sets(spec.data.uri, meta, splits, sorted(set(EVALUATE.values())), model_spec.image_size,
                     mode=spec.data.mode)
    loop_config = {
        "method": "original", "seed": spec.seed, "model_uri": absolute(spec.model),
        "original_uri": absolute(spec.original or spec.model), "gold_uri": absolute(spec.gold) if spec.gold else None,
        "data_plan": plan, "cache_mb": spec.data.cache_mb, "roles": {"forget": "forget", "retain": "retain_all"},
        "evaluate": EVALUATE, "evaluation": "metrics", "num_classes": meta.num_classes,
        "model_out": absolute(f"{spec.out}/evaluated.pt"), "floor_plan": floor_plan,
    }
    phases.lap("data")
    result = run_trainer(loop_config, spec.out, name=f"eval-{spec.label}-s{spec.seed}",
                         workers=spec.ray.workers, use_gpu=spec.ray.gpus, cpus_per_worker=spec.ray.cpus_per_worker,
                         max_failures=spec.ray.max_failures)
    phases.lap("run")
    seconds = phases.total()
    seconds["eval"] = result["eval_seconds"]
    record = ResultRecord(
        run_id=new_run_id("eval", spec.label, spec.seed), kind="eval", method=spec.label, dataset=meta.name,
        model=model_spec.name, seed=spec.seed, forget_spec=spec.forget,
        config={"data": spec.data.uri, "model": spec.model, "original": spec.original, "gold": spec.gold},
        metrics=result["evaluation"], phases=seconds, unlearn_seconds=None, workers=spec.ray.workers,
        images={"data": plan.stored_rows, "eval": result["images"]["eval"]},
        input_wait={"eval": result["input_wait"]["eval"]},
        gpus=spec.ray.workers if spec.ray.gpus else 0, versions=versions(), checkpoint_uri=spec.model)
    append_record(spec.out, record)
    print_metrics(spec.label, result["evaluation"])
    return record
