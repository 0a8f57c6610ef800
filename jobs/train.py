"""`unlearn train`: train the original model (all of train) or the gold model (`--retain-only`: D_r of a forget spec)
through Ray Data + Ray Train. Rerunning with the same --out and settings resumes from the latest epoch checkpoint
(with the same --workers), or returns the finished run's record; other settings are refused unless --overwrite."""

from __future__ import annotations

import argparse
import sys

from jobs.common import (add_data_flags, add_mlflow_flag, add_overwrite_flag, add_ray_flags, apply_endpoint,
                         check_mlflow, data_spec, ray_resources, run_main, track)
from jobs.paths import absolute_args
from pipeline.config import parse_overrides
from pipeline.runs.spec import TrainSpec


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
    add_overwrite_flag(p, "a training run")
    add_mlflow_flag(p)
    return p


def train_spec(args: argparse.Namespace) -> TrainSpec:
    """The command line as a TrainSpec: --set retrain.KEY=VALUE, then --epochs/--lr/--batch-size."""
    recipe = parse_overrides(args.set).get("retrain", {})
    for key in ("epochs", "lr", "batch_size"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    return TrainSpec(data=data_spec(args), out=args.out, model=args.model, weights=args.weights,
                     image_size=args.image_size, retain_only=args.retain_only, forget=args.forget, seed=args.seed,
                     recipe=recipe, overwrite=args.overwrite, ray=ray_resources(args))


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line parsed, its local paths made absolute (the workers run in folders of their own)."""
    return absolute_args(parser().parse_args(argv), paths=("data", "out", "weights"), specs=("forget",))


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    apply_endpoint(args)
    check_mlflow(args.mlflow, args.out)
    spec = train_spec(args)
    spec.check()  # flag errors first: the training code below imports torch and Ray, seconds on a small machine
    from pipeline.runs.train import train

    result = train(spec)
    track(args.mlflow, args.out, [result["record"]])
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
