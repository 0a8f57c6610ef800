"""`unlearn convert-weights --weights FILE --model NAME --out MODEL.pt`: a raw weights file (a state dict:
torchvision's ImageNet `vit_b_16` file, timm's `.safetensors` or `.pth`, a training script's checkpoint holding
one under `state_dict` / `model`) as the checkpoint `unlearn run`, `forget` and `eval` take (`--original`,
`--model`): the model with its classes, input channels, input size and normalisation, every weight loaded.

With --data the classes, channels, input size and normalisation are the dataset's (what the bench does with
`original.weights`); the weights must have been trained on that data's classes. Without --data give
--num-classes, --image-size, --mean and --std: the normalisation the weights were trained with (torchvision's
ImageNet weights: --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225; a timm model's are in its pretrained_cfg).
Nothing is downloaded. The file is read with torch.load(weights_only=True): no pickled code runs.
"""

from __future__ import annotations

import argparse
import os
import sys

from jobs.common import add_endpoint_flag, apply_endpoint, run_main
from jobs.paths import absolute_args
from pipeline import storage
from pipeline.errors import ConfigError, DataError
from pipeline.train.console import log

FITS = "the classes, channels and input size must be the ones the weights were trained with"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn convert-weights", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="the raw weights file (local or s3://)")
    p.add_argument("--model", required=True,
                   help="the architecture the weights are for: cnn | timm name | torchvision:NAME (vit_b_16, resnet50)")
    p.add_argument("--out", required=True, help="the checkpoint to write (local or s3://), e.g. original.pt")
    p.add_argument("--data", help="shard dataset URI: classes, channels, input size and normalisation from it")
    p.add_argument("--num-classes", type=int, help="classes of the weights' head (default: the --data's)")
    p.add_argument("--channels", type=int, help="input channels of the images (default: the --data's, else 3)")
    p.add_argument("--image-size", type=int, help="model input size in px (default: the --data's)")
    p.add_argument("--mean", type=float, nargs="+", help="normalisation mean per channel (default: the --data's)")
    p.add_argument("--std", type=float, nargs="+", help="normalisation std per channel (default: the --data's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_endpoint_flag(p)
    return p


def check_flags(args: argparse.Namespace) -> None:
    """Every check that needs no file, before torch is imported."""
    if not args.data:
        missing = [flag for flag, value in (("--num-classes", args.num_classes), ("--image-size", args.image_size),
                                            ("--mean", args.mean), ("--std", args.std)) if value is None]
        if missing:
            raise ConfigError(f"without --data, give {', '.join(missing)}: {FITS}, and the normalisation too "
                              "(torchvision's ImageNet weights: --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225)")
    if args.num_classes is not None and args.num_classes < 2:
        raise ConfigError(f"--num-classes must be at least 2, not {args.num_classes}")
    if args.channels is not None and args.channels < 1:
        raise ConfigError(f"--channels must be at least 1, not {args.channels}")
    if args.image_size is not None and args.image_size < 1:
        raise ConfigError(f"--image-size must be at least 1, not {args.image_size}")
    if (args.mean is None) != (args.std is None) or (args.mean and len(args.mean) != len(args.std)):
        raise ConfigError("--mean and --std go together, one value each per channel (or one for all)")
    if args.std and min(args.std) <= 0:
        raise ConfigError(f"--std values must be above 0, not {args.std}")


def model_spec(args: argparse.Namespace):
    """The ModelSpec the flags (and --data's meta, where given) describe."""
    from pipeline.models import ModelSpec, spec_for_data

    if args.data:
        from pipeline.data.shards import read_meta

        spec = spec_for_data(args.model, read_meta(args.data), args.image_size, args.mean, args.std)
        overrides = {"num_classes": args.num_classes, "channels": args.channels}
        return ModelSpec(**{**spec.__dict__, **{key: value for key, value in overrides.items() if value}})
    return ModelSpec(name=args.model, num_classes=args.num_classes, channels=args.channels or 3,
                     image_size=args.image_size, mean=list(args.mean), std=list(args.std))


def main(argv: list[str] | None = None) -> int:
    args = absolute_args(parser().parse_args(argv), paths=("weights", "out", "data"))
    check_flags(args)
    apply_endpoint(args)
    if not storage.is_s3(args.out) and os.path.isdir(args.out):
        raise ConfigError(f"--out {args.out} is a folder; give a file, e.g. {os.path.join(args.out, 'original.pt')}")
    if storage.exists(args.out) and not args.overwrite:
        raise ConfigError(f"{args.out} exists; give another --out, or --overwrite")
    if not storage.exists(args.weights):
        raise DataError(f"--weights {args.weights} does not exist")
    spec = model_spec(args)
    from pipeline.models import checkpoint_from_weights  # torch: once the flags and files are known to be right

    try:
        sha = checkpoint_from_weights(spec, args.weights, args.out)
    except DataError as exc:
        raise DataError(f"{exc} ({FITS}: --num-classes, --channels, --image-size{' or the --data' * bool(args.data)})") \
            from exc
    log(f"wrote {args.out}: {spec.name}, {spec.num_classes} classes, {spec.channels} channel(s), {spec.image_size} px, "
        f"mean {spec.mean}, std {spec.std}; sha256 {sha}")
    # forget trusts a model by a recorded sha256; a converted file has no `unlearn train` record beside it.
    log(f"use it as: unlearn run --original {args.out} ..., or unlearn forget --model {args.out} --model-sha256 {sha} "
        "... (its first request)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
