"""Training through Ray Data + Ray Train: the original model (all of train) or the gold model (D_r only)."""

from __future__ import annotations

from pipeline import storage
from pipeline.config import typed_values
from pipeline.data.shards import read_index, read_meta, verify_checksums
from pipeline.data.splits import make_splits
from pipeline.methods import method_class
from pipeline.results.records import ResultRecord, append_record, new_run_id
from pipeline.runs.common import Phases, check_output_uri, use_endpoint, versions
from pipeline.runs.spec import TrainSpec
from pipeline.train.console import log
from pipeline.train.datasets import plan_sets
from pipeline.train.runner import absolute, init_ray, read_restarts, run_trainer


def training_recipe(overrides: dict) -> dict:
    """The `retrain` method's defaults under `overrides` (numbers written like `1e-3` read as numbers)."""
    return {**method_class("retrain").defaults, **typed_values(overrides)}


def train(spec: TrainSpec) -> dict:
    """Train; return the worker loop's result (evaluation, epochs_run, timings) with the stored `record`.
    A rerun with the same output resumes from the latest epoch checkpoint."""
    spec.check()
    use_endpoint(spec.data.s3_endpoint)
    check_output_uri(spec.out)
    phases = Phases()
    meta = read_meta(spec.data.uri)
    if spec.data.verify:
        verify_checksums(spec.data.uri, meta)
    splits = (make_splits(read_index(spec.data.uri, meta), spec.forget, spec.seed, meta.num_classes)
              if spec.retain_only else None)
    init_ray(spec.ray.workers, spec.ray.cpus_per_worker)
    phases.lap("startup")

    image_size = spec.image_size or meta.height
    if splits:
        train_set, evaluate = "retain_all", {"forget": "forget", "retain": "retain_all", "val": "unseen",
                                             "test": "test"}
        log(f"gold model on D_r of {spec.forget} (seed {spec.seed}): {dict(splits.counts)}")
    else:
        train_set, evaluate = "train", {"train": "train", "val": "unseen", "test": "test"}
    plan = plan_sets(spec.data.uri, meta, splits, sorted(set(evaluate.values()) | {train_set}), image_size,
                     mode=spec.data.mode)
    model_uri = storage.join(absolute(spec.out), "model.pt")
    recipe = training_recipe(spec.recipe)
    loop_config = {
        "method": "retrain", "method_config": recipe, "seed": spec.seed, "weights": spec.weights,
        "model_spec": {"name": spec.model, "num_classes": meta.num_classes, "channels": meta.channels,
                       "image_size": image_size, "mean": meta.mean or [0.5], "std": meta.std or [0.25]},
        "data_plan": plan, "cache_mb": spec.data.cache_mb,
        "roles": {"forget": train_set, "retain": train_set},
        "evaluate": evaluate, "model_out": model_uri, "channels_last": spec.ray.channels_last,
    }
    phases.lap("data")
    log(f"training {spec.model} on {meta.name} with {spec.ray.workers} worker(s): {recipe}")
    result = run_trainer(loop_config, spec.out, name="train", workers=spec.ray.workers, use_gpu=spec.ray.gpus,
                         cpus_per_worker=spec.ray.cpus_per_worker, max_failures=spec.ray.max_failures)
    phases.lap("train")
    result["restarts"] = read_restarts(spec.out, "train", result.get("resumed_after_epoch"))
    for restart in result["restarts"]:
        log(f"restarted at {restart['time']} after epoch {restart['resumed_after_epoch']}: {restart['cause']}")
    result["record"] = record_training(spec, meta.name, recipe, result, model_uri, phases)
    accuracies = "  ".join(f"{name} {value:.3f}" for name, value in result["evaluation"].items())
    log(f"accuracy: {accuracies}")
    log(f"trained {result['epochs_run']} epoch(s) in {result['unlearn_seconds']:.1f} s "
        f"(+{result['epoch_report_seconds']:.1f} s of epoch checkpoints); model: {model_uri}")
    return result


def record_training(spec: TrainSpec, dataset: str, recipe: dict, result: dict, model_uri: str,
                    phases: Phases) -> ResultRecord:
    """The model's record under the output: its sha256 is what `unlearn forget` trusts the file by."""
    label = "retrain" if spec.retain_only else "original"
    record = ResultRecord(
        run_id=new_run_id("train", label, spec.seed), kind="train", method=label, dataset=dataset, model=spec.model,
        seed=spec.seed, forget_spec=spec.forget if spec.retain_only else "",
        config={"retrain": recipe, "data": spec.data.uri, "epochs_run": result["epochs_run"]},
        metrics={f"acc_{name}": value for name, value in result["evaluation"].items()}, phases=phases.total(),
        unlearn_seconds=result["unlearn_seconds"], workers=spec.ray.workers,
        gpus=spec.ray.workers if spec.ray.gpus else 0, versions=versions(), checkpoint_uri=model_uri,
        checkpoint_sha256=result["checkpoint_sha256"])
    append_record(spec.out, record)
    return record
