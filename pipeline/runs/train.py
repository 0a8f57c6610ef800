"""Training through Ray Data + Ray Train: the original model (all of train) or the gold model (D_r only)."""

from __future__ import annotations

from pipeline import storage
from pipeline.config import typed_values
from pipeline.data.shards import read_index, read_meta, verify_checksums
from pipeline.data.splits import make_splits
from pipeline.methods import method_class
from pipeline.results.records import ResultRecord, append_record, load_records, new_run_id
from pipeline.runs.common import Phases, check_output_uri, log_restarts, use_endpoint, versions
from pipeline.runs.identity import begin_run, marking_divergence, remember_identity, with_data_removals
from pipeline.runs.spec import TrainSpec
from pipeline.train.console import log
from pipeline.train.datasets import plan_sets
from pipeline.train.runner import absolute, init_ray, read_restarts, run_trainer

FIT_NAME = "train"  # one training run per output: OUT/model.pt, OUT/ray/train
ADVICE = "use another --out, or --overwrite to start it afresh"


def training_recipe(overrides: dict) -> dict:
    """The `retrain` method's defaults under `overrides` (numbers written like `1e-3` read as numbers)."""
    return {**method_class("retrain").defaults, **typed_values(overrides)}


def train(spec: TrainSpec) -> dict:
    """Train; return the worker loop's result (evaluation, epochs_run, timings, history, restarts) with the stored
    `record`. A rerun with the same output and settings resumes from the latest epoch checkpoint, or, once the run
    is recorded, returns its result from the record (`finished_before`) and trains nothing; other settings are
    refused unless spec.overwrite (pipeline/runs/identity.py)."""
    spec.check()
    use_endpoint(spec.data.s3_endpoint)
    check_output_uri(spec.out)
    phases = Phases()
    meta = read_meta(spec.data.uri)
    if spec.data.verify:
        verify_checksums(spec.data.uri, meta)
    splits = (make_splits(read_index(spec.data.uri, meta), spec.forget, spec.seed, meta.num_classes)
              if spec.retain_only else None)
    image_size = spec.image_size or meta.height
    recipe = training_recipe(spec.recipe)
    identity = with_data_removals(spec.identity(recipe, image_size), meta)
    finished = begin_run(spec.out, FIT_NAME, identity, spec.overwrite, spec.ray.workers, ADVICE)
    if finished:
        log(f"training run under {spec.out} is complete (record {finished}); nothing to do")
        return recorded_result(spec.out, finished)
    init_ray(spec.ray.workers, spec.ray.cpus_per_worker)
    phases.lap("startup")

    if splits:
        train_set, evaluate = "retain_all", {"forget": "forget", "retain": "retain_all", "val": "unseen",
                                             "test": "test"}
        log(f"gold model on D_r of {spec.forget} (seed {spec.seed}): {dict(splits.counts)}")
    else:
        train_set, evaluate = "train", {"train": "train", "val": "unseen", "test": "test"}
    plan = plan_sets(spec.data.uri, meta, splits, sorted(set(evaluate.values()) | {train_set}), image_size,
                     mode=spec.data.mode)
    model_uri = storage.join(absolute(spec.out), "model.pt")
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
    with marking_divergence(spec.out, FIT_NAME):  # a diverged run must not block the rerun with a lower lr
        result = run_trainer(loop_config, spec.out, name=FIT_NAME, workers=spec.ray.workers, use_gpu=spec.ray.gpus,
                             cpus_per_worker=spec.ray.cpus_per_worker, max_failures=spec.ray.max_failures)
    phases.lap("train")
    result["restarts"] = read_restarts(spec.out, FIT_NAME)
    log_restarts(result["restarts"])
    result["record"] = record_training(spec, meta.name, recipe, result, model_uri, phases)
    remember_identity(spec.out, FIT_NAME, identity, result["record"].run_id, spec.ray.workers)
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
        config={"retrain": recipe, "data": spec.data.uri, "epochs_run": result["epochs_run"],
                "history": result["history"], "restarts": result["restarts"]},
        metrics={f"acc_{name}": value for name, value in result["evaluation"].items()}, phases=phases.total(),
        images=result.get("images", {}), unlearn_seconds=result["unlearn_seconds"], workers=spec.ray.workers,
        gpus=spec.ray.workers if spec.ray.gpus else 0, versions=versions(), checkpoint_uri=model_uri,
        checkpoint_sha256=result["checkpoint_sha256"])
    append_record(spec.out, record)
    return record


def recorded_result(out: str, run_id: str) -> dict:
    """The result of a finished training run as its record holds it, for a rerun that trains nothing."""
    record = next(record for record in load_records(out) if record.run_id == run_id)
    return {"record": record, "finished_before": True, "checkpoint_sha256": record.checkpoint_sha256,
            "evaluation": {key[len("acc_"):]: value for key, value in record.metrics.items()
                           if key.startswith("acc_")},
            "epochs_run": record.config.get("epochs_run"), "unlearn_seconds": record.unlearn_seconds,
            "epoch_report_seconds": 0.0, "history": record.config.get("history", []),
            "restarts": record.config.get("restarts", [])}
