"""The diffusion benchmark (`unlearn bench --config configs/diffusion-digits.yaml`): per seed, one Ray Train fit
trains the original DDPM, the metrics classifier and the retrained-without-class gold DDPM, runs every configured
unlearning method, and evaluates every model (the relearning attack included); then the driver writes the
records, the poster table (Markdown + CSV), the sample grid PNG and a summary with the two open questions' figures.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt

import yaml

from pipeline import storage
from pipeline.config import deep_merge, load_yaml, parse_overrides
from pipeline.diffusion.driver import (DiffusionRun, Evaluation, checked_settings, evaluate_run, fit, make_record,
                                       prepare_run, print_metrics, unet_spec)
from pipeline.errors import ConfigError
from pipeline.methods import DIFFUSION_REGISTRY
from pipeline.runs.common import Phases
from pipeline.runs.spec import DataSpec, RayResources
from pipeline.train.console import log

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


def bench_runs(config: dict, run: DiffusionRun, meta, out: str) -> tuple[list[dict], dict, int]:
    """The fit's runs for one seed, and {row label: (train/unlearn run name, evaluate run name)}."""
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
                     "settings": checked_settings(method, settings, spec["timesteps"]), "original_uri": original,
                     "model_out": model_out})
        rows[label] = (f"{label}-s{seed}", model_out, True)
    for label, (_, model_uri, attack) in rows.items():
        runs.append(evaluate_run(f"{label}-s{seed}-eval", model_uri, classifier, evaluation, seed,
                                 attack=evaluation.attack and attack))
    return runs, rows, spec["image_size"]


def run_bench(config: dict, out: str | None = None) -> str:
    """Every seed's fit, its records, the poster table, summary and sample grid; returns the run URI."""
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


def write_grid(config: dict, rows: dict, num_classes: int, run: DiffusionRun, out: str) -> str:
    import torch

    from pipeline.diffusion.grid import write_sample_grid
    from pipeline.diffusion.metrics import SamplingPlan
    from pipeline.diffusion.model import load_diffusion_checkpoint

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
