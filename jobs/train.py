"""`unlearn train`: train the original model (all of train) or the gold model (`--retain-only`: D_r of a forget spec)
through Ray Data + Ray Train. Rerunning with the same --out resumes from the latest epoch checkpoint."""

from __future__ import annotations

import argparse
import sys

from jobs.common import (Phases, add_data_flags, add_mlflow_flag, add_ray_flags, apply_endpoint, check_run_arguments,
                         log, run_main, track, versions)
from pipeline import storage
from pipeline.config import parse_overrides
from pipeline.data.shards import read_index, read_meta, verify_checksums
from pipeline.data.splits import make_splits
from pipeline.methods import method_class
from pipeline.results.records import ResultRecord, append_record, new_run_id
from pipeline.train.datasets import plan_sets
from pipeline.train.runner import absolute, init_ray, read_restarts, run_trainer


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn train", description=__doc__)
    add_data_flags(p)
    add_ray_flags(p)
    p.add_argument("--model", default="cnn", help="cnn | timm name | torchvision:NAME (vit_b_16, resnet50)")
    p.add_argument("--weights", help="initial weights file (local or s3://); never downloaded")
    p.add_argument("--image-size", type=int, help="model input size (default: the dataset's)")
    p.add_argument("--retain-only", action="store_true", help="train the gold model on D_r of --forget")
    p.add_argument("--forget", default="random:0.1", help="forget spec, with --retain-only")
    p.add_argument("--seed", type=int, default=3407)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--set", action="append", default=[], metavar="retrain.KEY=VALUE",
                   help="override the training recipe (the `retrain` method's settings)")
    p.add_argument("--out", required=True, help="run URI: model.pt and checkpoints land here")
    add_mlflow_flag(p)
    return p


def recipe(args) -> dict:
    overrides = parse_overrides(args.set).get("retrain", {})
    for key in ("epochs", "lr", "batch_size"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return {**method_class("retrain").defaults, **overrides}


def main(argv: list[str] | None = None) -> int:
    train(parser().parse_args(argv))
    return 0


def train(args: argparse.Namespace) -> dict:
    """Train through Ray; return the worker loop's result (evaluation, epochs_run, timings)."""
    apply_endpoint(args)
    check_run_arguments(args)
    phases = Phases()
    meta = read_meta(args.data)
    if not args.no_verify:
        verify_checksums(args.data, meta)
    splits = make_splits(read_index(args.data, meta), args.forget, args.seed, meta.num_classes) \
        if args.retain_only else None
    init_ray(args.workers, args.cpus_per_worker)
    phases.lap("startup")

    image_size = args.image_size or meta.height
    if splits:
        train_set, evaluate = "retain_all", {"forget": "forget", "retain": "retain_all", "val": "unseen",
                                             "test": "test"}
        log(f"gold model on D_r of {args.forget} (seed {args.seed}): {dict(splits.counts)}")
    else:
        train_set, evaluate = "train", {"train": "train", "val": "unseen", "test": "test"}
    plan = plan_sets(args.data, meta, splits, sorted(set(evaluate.values()) | {train_set}), image_size,
                     mode=args.data_mode)
    model_uri = storage.join(absolute(args.out), "model.pt")
    config = recipe(args)
    loop_config = {
        "method": "retrain", "method_config": config, "seed": args.seed, "weights": args.weights,
        "model_spec": {"name": args.model, "num_classes": meta.num_classes, "channels": meta.channels,
                       "image_size": image_size, "mean": meta.mean or [0.5], "std": meta.std or [0.25]},
        "data_plan": plan, "cache_mb": args.cache_mb,
        "roles": {"forget": train_set, "retain": train_set},
        "evaluate": evaluate, "model_out": model_uri, "channels_last": args.channels_last,
    }
    phases.lap("data")
    log(f"training {args.model} on {meta.name} with {args.workers} worker(s): {config}")
    result = run_trainer(loop_config, args.out, name="train", workers=args.workers, use_gpu=args.gpus,
                         cpus_per_worker=args.cpus_per_worker, max_failures=args.max_failures)
    phases.lap("train")
    result["restarts"] = read_restarts(args.out, "train", result.get("resumed_after_epoch"))
    for restart in result["restarts"]:
        log(f"restarted at {restart['time']} after epoch {restart['resumed_after_epoch']}: {restart['cause']}")
    track(args, [record_training(args, meta.name, config, result, model_uri, phases)])
    accuracies = "  ".join(f"{name} {value:.3f}" for name, value in result["evaluation"].items())
    log(f"accuracy: {accuracies}")
    log(f"trained {result['epochs_run']} epoch(s) in {result['unlearn_seconds']:.1f} s "
        f"(+{result['epoch_report_seconds']:.1f} s of epoch checkpoints); model: {model_uri}")
    return result


def record_training(args, dataset: str, config: dict, result: dict, model_uri: str, phases: Phases) -> ResultRecord:
    """The model's record under --out: its sha256 is what `unlearn forget` trusts the file by."""
    label = "retrain" if args.retain_only else "original"
    record = ResultRecord(
        run_id=new_run_id("train", label, args.seed), kind="train", method=label, dataset=dataset, model=args.model,
        seed=args.seed, forget_spec=args.forget if args.retain_only else "",
        config={"retrain": config, "data": args.data, "epochs_run": result["epochs_run"]},
        metrics={f"acc_{name}": value for name, value in result["evaluation"].items()}, phases=phases.total(),
        unlearn_seconds=result["unlearn_seconds"], workers=args.workers, gpus=args.workers if args.gpus else 0,
        versions=versions(), checkpoint_uri=model_uri, checkpoint_sha256=result["checkpoint_sha256"])
    append_record(args.out, record)
    return record


if __name__ == "__main__":
    sys.exit(run_main(main))
