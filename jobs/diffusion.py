"""The diffusion family: `unlearn run --family diffusion --method train|retrain|original|METHOD ...` (METHOD: safemax,
safemax-cutoff, relabel), and the diffusion benchmark (`unlearn bench --config configs/diffusion-digits.yaml`, any
config with `family: diffusion`).

Parses the command line into a DiffusionRun (pipeline/runs/diffusion.py) and calls its run function; the
benchmark (below) plans, per seed, one Ray Train fit that trains the original DDPM, the metrics classifier and the
retrained-without-class gold DDPM, runs every configured unlearning method and evaluates every model (the
relearning attack included), then writes the records, the poster table (Markdown + CSV), the sample grid PNG and
a summary with the two open questions' figures. The algorithms live in pipeline/models (diffusion*.py: the DDPM,
its process and sampling), pipeline/methods (safemax.py, diffusion_relabel.py, diffusion_base.py,
diffusion_training.py), pipeline/metrics (diffusion*.py) and the Ray loop in pipeline/train/diffusion_loop.py.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import sys

import yaml

from jobs.common import add_data_flags, add_ray_flags, apply_endpoint, data_spec, ray_resources, run_main
from jobs.paths import absolute, absolute_args, absolute_spec
from pipeline import storage
from pipeline.config import deep_merge, load_yaml, parse_overrides
from pipeline.errors import ConfigError
from pipeline.methods import DIFFUSION_REGISTRY
from pipeline.train.console import log


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn run --family diffusion", description=__doc__)
    p.add_argument("--family", default="diffusion", choices=["diffusion"], help="this command's family")
    add_data_flags(p)
    add_ray_flags(p)
    p.add_argument("--method", required=True,
                   help="train (the original DDPM and the metrics classifier), retrain (the gold DDPM without the "
                        "class), original (evaluate --original as it is), or an unlearning method: "
                        f"{', '.join(DIFFUSION_REGISTRY)}")
    p.add_argument("--forget", default="class:3", help="class:C, the one class to forget (default class:3)")
    p.add_argument("--original", help="the original DDPM checkpoint (OUT/ddpm.pt of --method train)")
    p.add_argument("--classifier", help="the metrics classifier checkpoint (OUT/classifier.pt of --method train)")
    p.add_argument("--seed", type=int, default=3407)
    p.add_argument("--set", action="append", default=[], metavar="GROUP.KEY=VALUE",
                   help="safemax.decay=50, safemax.target=max_entropy, safemax-cutoff.t_min=500, "
                        "safemax.retain_weight=1, relabel.lr=1e-3, train.epochs=40, "
                        "unet.widths=[32,64,64], unet.image_size=32 (the CIFAR-size configuration)")
    p.add_argument("--samples-per-class", type=int, default=100, help="samples generated per class for the metrics")
    p.add_argument("--sampling-steps", type=int, default=25, help="DDIM steps per sample")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale (1: none)")
    p.add_argument("--attack", action="store_true",
                   help="relearning attack: fine-tune on 8 real images of the class, its accuracy after 10/50/100 steps")
    p.add_argument("--inception-weights", help="a local torchvision inception_v3 state dict: adds real FID")
    p.add_argument("--out", required=True, help="run URI: models, checkpoints, result records")
    p.add_argument("--name", help="run name (default METHOD-sSEED); rerunning it resumes")
    p.add_argument("--overwrite", action="store_true",
                   help="start this run afresh even if --out holds a run of the same name with other settings")
    return p


def diffusion_run(args: argparse.Namespace):
    from pipeline.runs.diffusion import DiffusionRun, Evaluation

    evaluation = Evaluation(per_class=args.samples_per_class, steps=args.sampling_steps, guidance=args.guidance,
                            attack=args.attack, inception_weights=args.inception_weights)
    return DiffusionRun(data=data_spec(args), method=args.method, out=args.out, forget=args.forget, seed=args.seed,
                        original=args.original, classifier=args.classifier, settings=parse_overrides(args.set),
                        name=args.name, overwrite=args.overwrite, evaluation=evaluation, ray=ray_resources(args))


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line parsed, its local paths made absolute (the workers run in folders of their own)."""
    return absolute_args(parser().parse_args(argv),
                         paths=("data", "original", "classifier", "out", "inception_weights"))


def main(argv: list[str] | None = None) -> int:
    """`unlearn run --family diffusion ...` (all of its argv, `--family diffusion` included)."""
    from pipeline.runs.diffusion import run_diffusion

    args = arguments(argv)
    apply_endpoint(args)
    run_diffusion(diffusion_run(args))
    return 0


def bench_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn bench (family: diffusion)",
                                description="the diffusion benchmark: original, retrain gold, SAFEMax as published "
                                            "and the project's variant (t >= t_min and all timesteps), the relabel "
                                            "baseline, the relearning attack, the poster table and the sample grid")
    p.add_argument("--config", required=True, help="a bench config with family: diffusion (YAML, local or s3://)")
    p.add_argument("--out", help="run URI (default: the config's out/<UTC time>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config value")
    p.add_argument("--seeds", nargs="+", type=int, help="override the config's seeds")
    p.add_argument("--workers", type=int, help="override ray.workers")
    return p


def is_diffusion_config(config_uri: str) -> bool:
    """Whether a bench config is the diffusion family's (`family: diffusion`)."""
    return load_yaml(config_uri).get("family") == "diffusion"


def absolute_bench_paths(config: dict) -> dict:
    """The diffusion bench config with its local paths absolute: out, data.uri, data.source (imagefolder:PATH) and
    evaluation.inception_weights, which the Ray workers read from folders of their own."""
    config["out"] = absolute(config["out"])
    config["data"]["uri"] = absolute(config["data"]["uri"])
    config["data"]["source"] = absolute_spec(config["data"].get("source"))
    evaluation = config.get("evaluation") or {}
    if evaluation.get("inception_weights"):
        evaluation["inception_weights"] = absolute(evaluation["inception_weights"])
    return config


def bench_main(argv: list[str] | None = None) -> int:
    """`unlearn bench --config CONFIG ...` for a config with `family: diffusion` (the same argv `unlearn bench` got)."""
    from jobs.report import publish

    args, _ = bench_parser().parse_known_args(argv)
    config = absolute_bench_paths(load_bench_config(args.config, args.set, args.seeds, args.workers))
    publish([run_bench(config, absolute(args.out))], title=config.get("name"))
    return 0


# ---- the benchmark ----------------------------------------------------------------------------------------------
DEFAULTS = yaml.safe_load("""
family: diffusion
name: null
out: runs/bench/diffusion
data: {uri: runs/data/digits, source: digits, seed: 0}
forget: class:3
seeds: [3407]
unet: {}
train: {}
classifier: {}
methods: {safemax: {}, relabel: {}}
evaluation: {per_class: 100, steps: 25, guidance: 2.0, attack: true, inception_weights: null}
grid: {per_class: 8}
ray: {workers: 1, cpus_per_worker: 1.0, max_failures: 1}
""")
GRID_FILE, TABLE_FILE, CSV_FILE, SUMMARY_FILE = "samples.png", "diffusion_table.md", "diffusion_table.csv", "summary.md"


def load_bench_config(uri: str, overrides: list[str] = (), seeds: list[int] | None = None,
                      workers: int | None = None) -> dict:
    """The config at `uri` over DEFAULTS, with the command line's overrides; a method not in the registry is refused."""
    config = deep_merge(copy.deepcopy(DEFAULTS), load_yaml(uri))
    config = deep_merge(config, parse_overrides(list(overrides)))
    if seeds:
        config["seeds"] = list(seeds)
    if workers:
        config["ray"]["workers"] = workers
    if config.get("family") != "diffusion":
        raise ConfigError(f"{uri} is not a diffusion bench config (family: diffusion)")
    for label, settings in config["methods"].items():
        if (settings or {}).get("method", label) not in DIFFUSION_REGISTRY:
            raise ConfigError(f"bench method {label!r}: unknown diffusion method (set `method:` to one of "
                              f"{', '.join(DIFFUSION_REGISTRY)})")
    return config


def _method_of(label: str, settings: dict | None) -> tuple[str, dict]:
    settings = dict(settings or {})
    return settings.pop("method", label), settings


def _ensure_data(config: dict) -> None:
    data = config["data"]
    if not storage.exists(storage.join(data["uri"], "_meta.json")):
        from pipeline.data.converters import prepare

        log(f"preparing {data['source']} at {data['uri']}")
        prepare(data["source"], data["uri"], seed=int(data.get("seed", 0)))


def bench_runs(config: dict, run, meta, out: str) -> tuple[list[dict], dict, int]:
    """The fit's runs for one seed, and {row label: (train/unlearn run name, evaluate run name)}."""
    from pipeline.runs.diffusion import checked_settings, evaluate_run, unet_spec

    spec = unet_spec(meta, config["unet"])
    evaluation, seed = run.evaluation, run.seed
    original, gold = storage.join(out, f"original-s{seed}.pt"), storage.join(out, f"retrain-s{seed}.pt")
    classifier = storage.join(out, f"classifier-s{seed}.pt")
    runs = [{"kind": "ddpm", "name": f"original-s{seed}", "spec": spec, "settings": config["train"],
             "train_set": "mixed", "model_out": original},
            {"kind": "classifier", "name": f"classifier-s{seed}", "settings": config["classifier"],
             "model_out": classifier},
            {"kind": "ddpm", "name": f"retrain-s{seed}", "spec": spec, "settings": config["train"],
             "train_set": "retain_all", "model_out": gold}]
    rows = {"original": (None, original, False), "retrain": (f"retrain-s{seed}", gold, True)}
    for label, raw in config["methods"].items():
        method, settings = _method_of(label, raw)
        model_out = storage.join(out, f"{label}-s{seed}.pt")
        runs.append({"kind": "unlearn", "name": f"{label}-s{seed}", "method": method, "label": label,
                     "settings": checked_settings(method, settings, spec["timesteps"], evaluation.guidance),
                     "original_uri": original,
                     "model_out": model_out})
        rows[label] = (f"{label}-s{seed}", model_out, True)
    for label, (_, model_uri, attack) in rows.items():
        runs.append(evaluate_run(f"{label}-s{seed}-eval", model_uri, classifier, evaluation, seed,
                                 attack=evaluation.attack and attack))
    return runs, rows, spec["image_size"]


def run_bench(config: dict, out: str | None = None) -> str:
    """Every seed's fit, its records, the poster table, summary and sample grid; returns the run URI."""
    from pipeline.runs.common import Phases
    from pipeline.runs.diffusion import DiffusionRun, Evaluation, fit, make_record, prepare_run, print_metrics
    from pipeline.runs.spec import DataSpec, RayResources
    from pipeline.train.runner import absolute

    out = absolute(out or storage.join(config["out"], dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")))
    _ensure_data(config)
    evaluation = Evaluation(**{k: v for k, v in config["evaluation"].items() if k in
                               {f.name for f in dataclasses.fields(Evaluation)}})
    records = []
    for seed in config["seeds"]:
        phases = Phases()
        run = DiffusionRun(data=DataSpec(uri=config["data"]["uri"]), method="bench", out=out, forget=config["forget"],
                           seed=int(seed), settings={}, evaluation=evaluation,
                           ray=RayResources(**config["ray"]))
        meta, index, chosen = prepare_run(dataclasses.replace(run, method="train"))
        runs, rows, image_size = bench_runs(config, run, meta, out)
        storage.write_text(storage.join(out, "bench.yaml"), yaml.safe_dump(config, sort_keys=False))
        log(f"diffusion bench: {', '.join(rows)} on {meta.name}, forget class {chosen}, seed {seed} -> {out}")
        results = fit(run, runs, meta, index, chosen, image_size, f"bench-s{seed}")
        phases.lap("run")
        by_name = {r["name"]: result for r, result in zip(runs, results)}
        settings_of = {r.get("label", r["name"]): r.get("settings", {}) for r in runs}
        for label, (trained_name, model_uri, _) in rows.items():
            trained = by_name.get(trained_name) if trained_name else None
            method_run = dataclasses.replace(run, original=runs[0]["model_out"], classifier=runs[1]["model_out"])
            record = make_record(method_run, meta.name, label, settings_of.get(label, {}),
                                 by_name[f"{label}-s{seed}-eval"]["metrics"], trained, phases.total(), model_uri,
                                 kind="bench")
            print_metrics(label, record.metrics)
            records.append(record)
        write_grid(config, rows, meta.num_classes, run, out)
    write_outputs(records, out)
    return out


def write_grid(config: dict, rows: dict, num_classes: int, run, out: str) -> str:
    import torch

    from pipeline.metrics.diffusion_grid import write_sample_grid
    from pipeline.models.diffusion import load_diffusion_checkpoint
    from pipeline.models.diffusion_process import SamplingPlan

    models = {label: load_diffusion_checkpoint(uri)[0] for label, (_, uri, _) in rows.items()}
    plan = SamplingPlan(per_class=int(config["grid"]["per_class"]), steps=run.evaluation.steps,
                        guidance=run.evaluation.guidance, seed=run.seed, clip=True)
    uri = write_sample_grid(storage.join(out, GRID_FILE), models, num_classes, plan, torch.device("cpu"))
    log(f"sample grid (a row per class, a block per model): {uri}")
    return uri


def write_outputs(records: list, out: str) -> None:
    from pipeline.results.tables import diffusion_csv, diffusion_markdown, diffusion_summary

    storage.write_text(storage.join(out, TABLE_FILE), diffusion_markdown(records))
    storage.write_text(storage.join(out, CSV_FILE), diffusion_csv(records))
    summary = diffusion_summary(records)
    storage.write_text(storage.join(out, SUMMARY_FILE), summary)
    log(summary)  # the table is printed with the report (jobs/report.py publish)


if __name__ == "__main__":
    sys.exit(run_main(bench_main if sys.argv[1:2] == ["bench"] else main,
                      sys.argv[2:] if sys.argv[1:2] == ["bench"] else None))
