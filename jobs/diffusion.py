"""The diffusion family: `unlearn run --family diffusion --method train|retrain|original|safemax|relabel ...` and the
diffusion benchmark (`unlearn bench --config configs/diffusion-digits.yaml`, a config with `family: diffusion`).

Parses, checks, plans the data, launches the Ray Train fit of pipeline/train/diffusion_loop.py and writes result
records; the algorithms live in pipeline/diffusion and pipeline/methods (safemax.py, diffusion_relabel.py).
"""

from __future__ import annotations

import argparse
import copy
import sys

from jobs.common import (Phases, add_data_flags, add_ray_flags, apply_endpoint, check_run_arguments, log, open_dataset,
                         run_main, versions)
from pipeline import storage
from pipeline.config import deep_merge, load_yaml, parse_overrides
from pipeline.diffusion.records import flat_metrics
from pipeline.errors import ConfigError
from pipeline.methods import DIFFUSION_REGISTRY, create_diffusion_method
from pipeline.results.records import ResultRecord, append_record, new_run_id
from pipeline.train.runner import absolute, init_ray, run_trainer

TRAINING_METHODS = ("train", "retrain", "original")
METHODS = (*TRAINING_METHODS, *DIFFUSION_REGISTRY)
SETS = ["train", "forget", "retain_all", "unseen", "test"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn run --family diffusion", description=__doc__)
    p.add_argument("--family", default="diffusion", choices=["diffusion"], help="(this command's family)")
    add_data_flags(p)
    add_ray_flags(p)
    p.add_argument("--method", required=True,
                   help="train (the original DDPM and the metrics classifier), retrain (the gold DDPM without the "
                        f"class), original (evaluate --original as is), or an unlearning method: {', '.join(DIFFUSION_REGISTRY)}")
    p.add_argument("--forget", default="class:3", help="class:C, the class to forget (one class)")
    p.add_argument("--original", help="the original DDPM checkpoint (from --method train); needed to unlearn")
    p.add_argument("--classifier", help="the metrics classifier checkpoint (from --method train)")
    p.add_argument("--seed", type=int, default=3407)
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="settings: safemax.t_min=500, safemax.retain_weight=1, relabel.lr=1e-3, train.epochs=40, "
                        "unet.widths=[32,64,64], unet.image_size=32 (the CIFAR-size configuration)")
    p.add_argument("--samples-per-class", type=int, default=100, help="samples generated per class for the metrics")
    p.add_argument("--sampling-steps", type=int, default=25, help="DDIM steps per sample")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale (1: none)")
    p.add_argument("--attack", action="store_true",
                   help="relearning attack: fine-tune on 8 real images of the class, report its accuracy after "
                        "10/50/100 steps")
    p.add_argument("--inception-weights", help="a local torchvision inception_v3 state dict: adds real FID")
    p.add_argument("--out", required=True, help="run URI: models, checkpoints, result records")
    p.add_argument("--name", help="run name (default METHOD-sSEED); a rerun with the same name resumes")
    return p


def forget_class(spec: str, num_classes: int) -> int:
    kind, _, value = spec.partition(":")
    if kind != "class" or not value.strip().isdigit():
        raise ConfigError(f"the diffusion family forgets one whole class: --forget class:C, not {spec!r}")
    chosen = int(value)
    if not 0 <= chosen < num_classes:
        raise ConfigError(f"--forget {spec}: the data has classes 0..{num_classes - 1}, so class {chosen} does not exist")
    return chosen


def unet_spec(meta, overrides: dict) -> dict:
    from dataclasses import asdict

    from pipeline.diffusion.model import DiffusionSpec

    values = {"num_classes": meta.num_classes, "channels": meta.channels, **overrides}
    try:
        spec = DiffusionSpec(**values)
    except TypeError as exc:
        raise ConfigError(f"unet settings: {exc}") from exc
    spec.validate()
    return asdict(spec)


def checked_settings(method: str, settings: dict, num_timesteps: int) -> dict:
    """A method's resolved settings, every value checked on the driver (t_min against the model's timesteps)."""
    instance = create_diffusion_method(method, settings, log=None)
    instance.check(num_timesteps)
    return instance.config


def _sampling(args) -> dict:
    if args.samples_per_class < 2:
        raise ConfigError(f"--samples-per-class must be at least 2, not {args.samples_per_class}")
    if args.sampling_steps < 1:
        raise ConfigError(f"--sampling-steps must be at least 1, not {args.sampling_steps}")
    return {"per_class": args.samples_per_class, "steps": args.sampling_steps, "guidance": args.guidance,
            "seed": args.seed, "clip": True}


def plan_runs(args, meta, chosen: int) -> tuple[list[dict], dict]:
    """The loop's runs for one command, and the shared part of the loop config."""
    overrides = parse_overrides(args.set)
    unknown = sorted(set(overrides) - {"unet", "train", "classifier", *DIFFUSION_REGISTRY})
    if unknown:
        raise ConfigError(f"--set names {unknown}; known: unet, train, classifier, {', '.join(DIFFUSION_REGISTRY)}")
    out = absolute(args.out)
    name = args.name or f"{args.method}-s{args.seed}"
    if args.method in ("train", "retrain"):
        spec = unet_spec(meta, overrides.get("unet", {}))
        model_out = storage.join(out, "ddpm.pt" if args.method == "train" else f"{name}.pt")
        runs = [{"kind": "ddpm", "name": f"{name}-ddpm", "spec": spec, "settings": overrides.get("train", {}),
                 "train_set": "train" if args.method == "train" else "retain_all", "model_out": model_out}]
        classifier = args.classifier
        if args.method == "train":
            classifier = storage.join(out, "classifier.pt")
            runs.append({"kind": "classifier", "name": f"{name}-classifier", "model_out": classifier,
                         "settings": overrides.get("classifier", {})})
        if classifier:
            runs.append(_evaluate(f"{name}-eval", model_out, classifier, args))
        return runs, {"image_size": spec["image_size"]}
    if not args.original or not args.classifier:
        raise ConfigError(f"--method {args.method} needs --original DDPM and --classifier (from --method train)")
    from pipeline.diffusion.model import load_diffusion_checkpoint

    _, spec, _ = load_diffusion_checkpoint(args.original)
    if spec.num_classes != meta.num_classes:
        raise ConfigError(f"{args.original} generates {spec.num_classes} classes but {args.data} has {meta.num_classes}")
    if args.method == "original":
        return [_evaluate(f"{name}-eval", absolute(args.original), args.classifier, args)], {"image_size": spec.image_size}
    settings = checked_settings(args.method, overrides.get(args.method, {}), spec.timesteps)
    model_out = storage.join(out, f"{name}.pt")
    runs = [{"kind": "unlearn", "name": name, "method": args.method, "settings": settings,
             "original_uri": absolute(args.original), "model_out": model_out},
            _evaluate(f"{name}-eval", model_out, args.classifier, args)]
    return runs, {"image_size": spec.image_size}


def _evaluate(name: str, model_uri: str, classifier: str, args) -> dict:
    return {"kind": "evaluate", "name": name, "model_uri": model_uri, "classifier_uri": absolute(classifier),
            "sampling": _sampling(args), "attack": {"images": 8, "steps": [10, 50, 100]} if args.attack else None,
            "inception_weights": args.inception_weights}


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r} for the diffusion family; available: {', '.join(METHODS)}")


def fit(args, runs: list[dict], meta, index, chosen: int, image_size: int, fit_name: str) -> list[dict]:
    """Plan the sets, run the loop through Ray Train, return every run's result."""
    from pipeline.data.splits import make_splits
    from pipeline.train.datasets import plan_sets
    from pipeline.train.diffusion_loop import diffusion_loop

    splits = make_splits(index, f"class:{chosen}", args.seed, meta.num_classes)
    init_ray(args.workers, args.cpus_per_worker)
    plan = plan_sets(args.data, meta, splits, SETS, image_size, (), args.data_mode)
    loop_config = {"seed": args.seed, "data_plan": plan, "cache_mb": args.cache_mb, "num_classes": meta.num_classes,
                   "channels": meta.channels, "image_size": image_size, "forget_classes": [chosen], "runs": runs}
    return run_trainer(loop_config, args.out, name=fit_name, workers=args.workers, use_gpu=args.gpus,
                       cpus_per_worker=args.cpus_per_worker, max_failures=args.max_failures,
                       loop=diffusion_loop)


def record(args, meta, label: str, method: str, settings: dict, evaluation: dict, trained: dict | None,
           phases: dict, checkpoint: str | None, kind: str = "unlearn", notes: str = "") -> ResultRecord:
    metrics = flat_metrics(evaluation, trained)
    result = ResultRecord(
        run_id=new_run_id(kind, label, args.seed), kind=kind, method=label, dataset=meta.name, model="unet",
        seed=args.seed, forget_spec=args.forget,
        config={"family": "diffusion", method: settings, "data": args.data, "original": args.original,
                "classifier": args.classifier, "workers": args.workers, "evaluation": _sampling(args),
                "history": (trained or {}).get("history", [])},
        metrics=metrics, phases=phases, unlearn_seconds=(trained or {}).get("unlearn_seconds"),
        workers=args.workers, gpus=args.workers if args.gpus else 0, versions=versions(),
        checkpoint_uri=checkpoint, checkpoint_sha256=(trained or {}).get("checkpoint_sha256"), notes=notes)
    append_record(args.out, result)
    return result


def print_metrics(label: str, metrics: dict) -> None:
    def show(key, digits=3):
        value = metrics.get(key)
        return "—" if value is None else f"{value:.{digits}f}"

    relearn = "  ".join(f"relearn@{key[len('relearn_acc_'):]} {show(key, 2)}" for key in metrics
                        if key.startswith("relearn_acc_"))
    log(f"[{label}] forget-class acc {show('gen_acc_forget')}  retain acc {show('gen_acc_retain')}  "
        f"FID proxy {show('fid_proxy', 1)}  forget pixel std {show('forget_pixel_std')}  "
        f"minutes {show('unlearn_minutes')}  peak MB {show('peak_memory_mb', 0)}  {relearn}".rstrip())


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_method(args.method)
    apply_endpoint(args)
    check_run_arguments(args)
    phases = Phases()
    meta, index = open_dataset(args)
    chosen = forget_class(args.forget, meta.num_classes)
    runs, shared = plan_runs(args, meta, chosen)
    phases.lap("startup")
    name = args.name or f"{args.method}-s{args.seed}"
    results = fit(args, runs, meta, index, chosen, shared["image_size"], name)
    phases.lap("run")
    by_name = {run["name"]: result for run, result in zip(runs, results)}
    trained = next((by_name[r["name"]] for r in runs if r["kind"] in ("ddpm", "unlearn")), None)
    evaluation = next((by_name[r["name"]]["metrics"] for r in runs if r["kind"] == "evaluate"), None)
    if evaluation is not None:
        model_uri = next(r["model_uri"] for r in runs if r["kind"] == "evaluate")
        settings = next((r.get("settings", {}) for r in runs if r["kind"] in ("ddpm", "unlearn")), {})
        rec = record(args, meta, args.method, args.method, settings, evaluation, trained, phases.total(), model_uri)
        print_metrics(args.method, rec.metrics)
    log(f"models and records under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
