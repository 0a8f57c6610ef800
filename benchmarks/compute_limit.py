"""Benchmark: the compute limit, images/s of pure training steps and pure evaluation forwards on one device.

    python -m benchmarks.compute_limit --model vit_b_16 --image-size 224 --num-classes 100 \
        --batch-size 128 --steps 30 [--device cuda|cpu] [--amp bf16] [--channels-last] [--json OUT]

The model is the project's own (`pipeline.models.build_model`: the backbone behind the uint8-in
normalisation every run uses), randomly initialised. One synthetic uint8 batch is made ON the device
once, so no data loading, decoding or host-to-device copy is timed: what is left is the ceiling that a
real run (`unlearn run`, whose records give images per phase) is compared to.

- train: forward + cross-entropy + backward + optimizer step (SGD with momentum, the project's default
  optimizer; `--optimizer adamw` for LoTUS's), under bf16 autocast with `--amp bf16` on CUDA, as the
  methods' `autocast` does, with the model (and the batch) in channels_last with `--channels-last`.
- eval: forwards under no_grad in eval mode, at `--eval-batch-size` (256: the evaluation's batch size).

Both run `--warmup` untimed steps first (cuDNN/cuBLAS autotuning, allocator growth, lazy init); the
timed steps are bracketed by torch.cuda.synchronize, so queued kernels count. The figures are printed and,
with `--json`, written as one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from pipeline.errors import UnlearnError
from pipeline.models import ModelSpec, build_model

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compute_limit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_b_16", help="any name build_model takes (cnn, vit_b_16, resnet50, timm)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=128, help="training batch (LoTUS's default: 128)")
    p.add_argument("--eval-batch-size", type=int, default=256, help="evaluation batch (the evaluation's: 256)")
    p.add_argument("--steps", type=int, default=30, help="timed steps of each kind")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps of each kind before the clock starts")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--amp", choices=["none", "bf16"], default="none",
                   help="bf16: bf16 autocast on CUDA (ignored on CPU, as the methods ignore it)")
    p.add_argument("--channels-last", action="store_true", help="model and batch in channels_last")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_out", help="write the figures here as JSON")
    return p


def _check(args: argparse.Namespace) -> None:
    for name in ("image_size", "channels", "num_classes", "batch_size", "eval_batch_size", "steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    if args.warmup < 0:
        raise SystemExit(f"error: --warmup must be 0 or more, not {args.warmup}")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, amp: str):
    # The same rule as UnlearningMethod.autocast: bf16 on CUDA only, so the CPU figure matches a CPU run.
    if device.type == "cuda" and amp == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _batch(size: int, args: argparse.Namespace, device: torch.device, generator: torch.Generator):
    images = torch.randint(0, 256, (size, args.channels, args.image_size, args.image_size), dtype=torch.uint8,
                           generator=generator).to(device)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, args.num_classes, (size,), generator=generator).to(device)
    return images, labels


def _timed(step, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds for `steps` calls of `step` after `warmup` untimed ones, all queued work included."""
    for _ in range(warmup):
        step()
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    return time.perf_counter() - started


def measure(args: argparse.Namespace) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {device} asked for, but torch sees no CUDA device "
                         f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
    torch.manual_seed(args.seed)
    # The mean/std only shift the normalisation; any fixed values cost the same.
    spec = ModelSpec(name=args.model, num_classes=args.num_classes, channels=args.channels,
                     image_size=args.image_size, mean=IMAGENET_MEAN[:args.channels], std=IMAGENET_STD[:args.channels])
    model = build_model(spec).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    parameters = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=1e-4, momentum=0.9, weight_decay=5e-4)
    else:
        optimizer = torch.optim.AdamW(parameters, lr=1e-4, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(args.seed)
    train_images, train_labels = _batch(args.batch_size, args, device, generator)
    eval_images, _ = _batch(args.eval_batch_size, args, device, generator)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, args.amp):
            loss = F.cross_entropy(model(train_images), train_labels)
        loss.backward()
        optimizer.step()  # no .item(): a host sync per step is the loop's cost, not the device's

    def eval_step() -> None:
        with torch.no_grad(), _autocast(device, args.amp):
            model(eval_images).argmax(dim=1)

    model.train()
    train_seconds = _timed(train_step, args.warmup, args.steps, device)
    model.eval()
    eval_seconds = _timed(eval_step, args.warmup, args.steps, device)
    result = {
        "model": args.model, "image_size": args.image_size, "channels": args.channels,
        "num_classes": args.num_classes, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "amp": args.amp if device.type == "cuda" else "none", "channels_last": args.channels_last,
        "optimizer": args.optimizer, "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size,
        "steps": args.steps, "warmup": args.warmup,
        "train_seconds": train_seconds, "eval_seconds": eval_seconds,
        "train_images_per_s": args.batch_size * args.steps / train_seconds,
        "eval_images_per_s": args.eval_batch_size * args.steps / eval_seconds,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 1024**2
    return result


def describe(result: dict) -> str:
    amp = result["amp"] if result["amp"] != "none" else "fp32"
    layout = ", channels_last" if result["channels_last"] else ""
    return "\n".join([
        f"compute limit: {result['model']} at {result['image_size']} px, {result['num_classes']} classes, on "
        f"{result['device_name']} ({amp}{layout}); synthetic batch on the device, no data loading",
        f"  train (fwd+bwd+{result['optimizer']}, batch {result['batch_size']}): "
        f"{result['train_images_per_s']:,.0f} images/s ({result['steps']} steps in {result['train_seconds']:.2f} s)",
        f"  eval (no_grad forward, batch {result['eval_batch_size']}): "
        f"{result['eval_images_per_s']:,.0f} images/s ({result['steps']} steps in {result['eval_seconds']:.2f} s)",
    ])


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _check(args)
    try:
        result = measure(args)
    except UnlearnError as exc:  # an unknown model name, for one: one line, as the `unlearn` jobs print it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(describe(result), flush=True)
    if args.json_out:
        directory = os.path.dirname(os.path.abspath(args.json_out))
        os.makedirs(directory, exist_ok=True)
        with open(args.json_out, "w") as handle:
            json.dump(result, handle, indent=2, sort_keys=True)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
