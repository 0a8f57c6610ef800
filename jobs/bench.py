"""`unlearn bench --config FILE`: the benchmark of a config, every method x seeds, then the report.

Prepares the data if needed, gets the original model (trained once, or taken from the config), and per
seed trains the gold model (when the config has one) and runs `original` plus every method one after
another in ONE Ray Train fit (Ray's start-up paid once per seed). The gold model is evaluated in the
same fit as the `retrain` row, its training time standing as its unlearning time, so every method's time / retrain
ratio can be read off the table. Then report.md / report.csv / PNGs / report.html are written under
the run URI, and the table, the LoTUS / retrain time ratio and the report path are printed.

`--compare PREVIOUS_RUN_URI`: the nightly regression check. Every per-method mean that moved beyond the
config's tolerance bands is printed with how far it moved, and the exit status is 1. A previous run that holds no
records (the first night, or one after a skipped night) is compared with nothing: said at the start and in the
report, exit status 0.

Rerunning with the same `--out` continues an interrupted run: (method, seed) rows that already have a
record are not run again, so a rerun of a finished run only rebuilds the report (and the check).

The config schema, every key with its default (all optional except `methods` and `data.uri`), is
CONFIG_SCHEMA below, printed at the end of `unlearn bench --help`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import json
import sys
import time
from typing import TYPE_CHECKING

import yaml

from jobs.common import add_endpoint_flag, add_mlflow_flag, add_verbose_flag, apply_endpoint, check_mlflow, run_main, track
from jobs.paths import absolute, absolute_spec
from jobs.report import publish, regression_check, warn_without_records
from pipeline import storage
from pipeline.config import deep_merge, load_yaml, parse_overrides, typed_values
from pipeline.data.converters import SyntheticSpec, prepare, source_for
from pipeline.data.shards import META_FILE, read_meta, verify_checksums
from pipeline.errors import ConfigError, DataError
from pipeline.methods import REGISTRY
from pipeline.runs.identity import RerunRefused, with_data_removals
from pipeline.runs.spec import DataSpec, MethodRun, RayResources, RunSpec, TrainSpec
from pipeline.train.console import log
from pipeline.train.ray_address import add_address_flag

if TYPE_CHECKING:  # in annotations only: pipeline.results loads pandas, imported where records are read
    from pipeline.results.records import ResultRecord

# The one definition of the config's keys and defaults: parsed into DEFAULTS, shown by --help.
CONFIG_SCHEMA = """\
family: classifier                 # classifier; diffusion: the diffusion benchmark, its own schema
                                   #   (configs/diffusion-digits.yaml, docs/diffusion.md)
name: null                         # report title
out: runs/bench                    # each run goes to <out>/<UTC time> unless --out names the run URI
models: null                       # where the original and gold models live (default: the run URI);
                                   #   models already there are reused when made from the same settings
data:
  uri: null                        # shard dataset (local or s3://), e.g. runs/data/digits-hard
  source: null                     # digits | digits-hard | synthetic | synthetic-imagenet | imagefolder:PATH,
                                   #   prepared into `uri` when it holds no dataset yet (a dataset there
                                   #   prepared from another source or settings is an error); null: `uri`
                                   #   must exist
  seed: 0                          # the prepared split (and generated images) of `source`
  synthetic: {}                    # synthetic and synthetic-imagenet: {classes: 10, size: null,
                                   #   train_per_class: 20, val_per_class: 5, test_per_class: 5}; size is the
                                   #   stored square size for synthetic (null: 64), the model-input crop of
                                   #   the ~500x375 JPEGs for synthetic-imagenet (null: 224), the model input
                                   #   of imagefolder (null: the images' own size when they share one square
                                   #   size, else 224 by the ImageNet transform; docs/own-data.md)
  verify: true                     # sha256 the shards once at the start (the jobs then skip it)
model:
  name: cnn                        # cnn | timm name | vit_b_16 | resnet50 | torchvision:NAME
  image_size: null                 # model input size (default: the data's)
  weights: null                    # initial weights when the original / gold models are trained here
  mean: null                       # input normalisation of original.weights (default: the data's)
  std: null
original:
  checkpoint: null                 # a checkpoint written by this project: the trained model, used as is
  weights: null                    # a weights file that IS the trained model (e.g. your ImageNet
                                   #   vit_b_16 state dict): wrapped into a checkpoint, no training
  seed: 3407                       # initialisation and shuffling seed when the original is trained here
train: {}                          # training recipe of the original and gold models: overrides of the
                                   #   `retrain` method's defaults (epochs, lr, batch_size, optimizer, ...)
gold: true                         # train a gold (retrained) model per seed: JSD, Avg Gap, `retrain` row
floor_draws: null                  # draws for RF-JSD's sampling floor in every record (null: 200, fewer
                                   #   for many classes; 0: none); see `unlearn eval --help`
forget: random:0.1                 # random:F | class:C1,C2 | ids:FILE | limited:F/R
seeds: [3407, 13, 12]
methods: []                        # unlearning methods in table order, e.g. [finetune, lotus] (the
                                   #   original/retrain rows are added)
common_settings: {}                # settings given to every method in `methods`, e.g. {amp: bf16}
settings: {}                       # per-method overrides of the method's defaults (`unlearn methods`),
                                   #   e.g. {lotus: {epochs: 3}}
best_configs: null                 # a sweep's best configs, YAML {method: {setting: value}}; they win
                                   #   over common_settings and settings (CLI --set wins over them all)
ray: {workers: 1, gpus: false, cpus_per_worker: 1.0, max_failures: 1, channels_last: false}
u_lira:                            # per-example membership audit of every method's model (`unlearn audit-mia`)
  shadows: 0                       #   K shadow models (even, at least 4); 0: no audit
  variant: online                  #   online (unlearned + never-seen shadows) | offline (never-seen only)
  bank: null                       #   shadow bank URI (default: <models>/ulira-bank), reused across runs
  fpr: [0.01]                      #   FPRs of the TPR columns (K must give enough never-seen trials)
  resamples: 1000                  #   bootstrap resamples per interval
bands: {}                          # tolerance bands for --compare, {metric: {rule: limit}} (see
                                   #   pipeline/results/regression.py); empty: the built-in bands
"""
DEFAULTS = yaml.safe_load(CONFIG_SCHEMA)
# Sections whose keys are fixed: a misspelt key there is an error rather than a silently ignored setting.
CHECKED_SECTIONS = ("data", "model", "original", "ray", "u_lira")
REFERENCE_ROWS = ("original", "retrain")
HEADLINE_METHOD = "lotus"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn bench", description=__doc__,
                                epilog="config schema (YAML), with the defaults:\n\n" + CONFIG_SCHEMA,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="benchmark config (YAML, local or s3://)")
    p.add_argument("--out", help="run URI for records, unlearned models and the report "
                                 "(default: <config out>/<UTC time>; an existing run is continued)")
    p.add_argument("--compare", nargs="+", default=[], metavar="PREVIOUS_RUN_URI",
                   help="previous run(s) to check against the config's bands; exit 1 when anything regressed")
    p.add_argument("--seeds", nargs="+", type=int, help="override the config's seeds")
    p.add_argument("--methods", nargs="+", help="override the config's methods (names, or one comma list)")
    p.add_argument("--best-configs", help="a sweep's best configs YAML (overrides the config's best_configs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override any config value, e.g. --set settings.lotus.epochs=2 --set ray.workers=4")
    p.add_argument("--cluster", metavar="FILE",
                   help="the Ray cluster-launcher file the job runs on (cluster.yaml, local or s3://): a config whose "
                        "ray section that cluster can never hold is refused before any work (docs/cluster.md)")
    add_endpoint_flag(p)
    add_address_flag(p)
    add_verbose_flag(p)
    add_mlflow_flag(p)
    return p


# ---- the config -----------------------------------------------------------------------------------------


def load_config(uri: str, overrides: list[str] = (), seeds: list[int] | None = None,
                methods: list[str] | None = None, best_configs: str | None = None) -> dict:
    """The resolved config: defaults < file < best configs (into settings) < --set < --seeds/--methods."""
    cli = parse_overrides(list(overrides))
    config = deep_merge(deep_merge(copy.deepcopy(DEFAULTS), load_yaml(uri)), cli)
    best_uri = best_configs or config["best_configs"]
    if best_uri:
        config["best_configs"] = best_uri
        config["settings"] = deep_merge(deep_merge(config["settings"], read_best_configs(best_uri)),
                                        cli.get("settings", {}))
    if seeds:
        config["seeds"] = list(seeds)
    if methods:
        config["methods"] = [name for entry in methods for name in entry.split(",") if name]
    validate_config(config, uri)
    return absolute_config(config)


# The config's values that name local files or folders: made absolute from the folder the bench was started in, so
# the Ray workers (which run elsewhere) and a rerun from another folder find the same ones. URIs stay as they are.
CONFIG_PATHS = (("out",), ("models",), ("best_configs",), ("data", "uri"), ("model", "weights"),
                ("original", "checkpoint"), ("original", "weights"), ("u_lira", "bank"))
CONFIG_SPECS = (("forget",), ("data", "source"))  # ids:FILE, imagefolder:PATH


def absolute_config(config: dict) -> dict:
    """The config with every local path in it absolute (CONFIG_PATHS, and the paths inside CONFIG_SPECS)."""
    for keys, make in [*((keys, absolute) for keys in CONFIG_PATHS), *((keys, absolute_spec) for keys in CONFIG_SPECS)]:
        *parents, last = keys
        section = config
        for key in parents:
            section = section[key]
        if isinstance(section.get(last), str):
            section[last] = make(section[last])
    return config


def read_best_configs(uri: str) -> dict:
    best = load_yaml(uri)
    for method, settings in best.items():
        if method not in REGISTRY or not isinstance(settings, dict):
            raise ConfigError(f"{uri}: expected {{method: {{setting: value}}}}, got {method!r}: {settings!r}")
    return best


def validate_config(config: dict, uri: str) -> None:
    if config["family"] != "classifier":
        raise ConfigError(f"{uri}: family {config['family']!r} is not a classifier benchmark (classifier, or diffusion "
                          "run by `unlearn bench` itself)")
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{uri}: unknown key(s) {unknown}; known: {sorted(DEFAULTS)}")
    for section in CHECKED_SECTIONS:
        extra = sorted(set(config[section]) - set(DEFAULTS[section]))
        if extra:
            raise ConfigError(f"{uri}: unknown key(s) {extra} in {section}; known: {sorted(DEFAULTS[section])}")
    if not config["data"]["uri"]:
        raise ConfigError(f"{uri}: data.uri is required (the shards, or where to prepare data.source)")
    if not config["methods"]:
        raise ConfigError(f"{uri}: `methods` lists no unlearning method")
    for method in [*config["methods"], *config["settings"]]:
        if method not in REGISTRY or method in REFERENCE_ROWS:
            choices = ", ".join(name for name in REGISTRY if name not in REFERENCE_ROWS)
            raise ConfigError(f"{uri}: {method!r} is not an unlearning method to benchmark; use {choices}")
    if len(set(config["methods"])) != len(config["methods"]):
        raise ConfigError(f"{uri}: a method is listed twice in {config['methods']}")
    if not config["seeds"] or len(set(config["seeds"])) != len(config["seeds"]):
        raise ConfigError(f"{uri}: seeds must be a non-empty list of distinct integers, not {config['seeds']}")
    if config["original"]["checkpoint"] and config["original"]["weights"]:
        raise ConfigError(f"{uri}: give original.checkpoint or original.weights, not both")
    from pipeline.results.regression import DEFAULT_BANDS, validate_bands  # pandas: after --help and flag errors

    validate_bands(config["bands"] or DEFAULT_BANDS)
    validate_ulira(config["u_lira"], uri)


def validate_ulira(section: dict, uri: str) -> None:
    from pipeline.metrics.ulira import check_even_shadows, check_fpr, check_variant

    if not section["shadows"]:
        return
    try:
        check_even_shadows(int(section["shadows"]))
        check_variant(section["variant"])
        for fpr in section["fpr"]:
            check_fpr(float(fpr))
    except ConfigError as exc:
        raise ConfigError(f"{uri}: u_lira: {exc}") from None


def method_settings(config: dict, method: str) -> dict:
    """common_settings < settings[method], numbers written like `1e-6` read as numbers."""
    return typed_values({**config["common_settings"], **config["settings"].get(method, {})})


def default_run_uri(config: dict) -> str:
    return storage.join(config["out"], dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ"))


# ---- steps -----------------------------------------------------------------------------------------------


def ray_resources(config: dict) -> RayResources:
    ray = config["ray"]
    return RayResources(workers=int(ray["workers"]), gpus=bool(ray["gpus"]), cpus_per_worker=float(ray["cpus_per_worker"]),
                        max_failures=int(ray["max_failures"]), channels_last=bool(ray["channels_last"]))


def train_spec(config: dict, data: str, folder: str, seed: int, retain_only: bool = False) -> TrainSpec:
    """The original (all of train) or a gold model (D_r of the config's forget spec), as the config trains them.
    The shards were verified once at the start, so the run skips it."""
    model = config["model"]
    return TrainSpec(data=DataSpec(uri=data, verify=False), out=folder, model=model["name"], weights=model["weights"],
                     image_size=model["image_size"], retain_only=retain_only, forget=config["forget"], seed=seed,
                     recipe=config["train"], ray=ray_resources(config))


def ensure_data(config: dict) -> str:
    """The shard URI; a configured source is prepared there first if no dataset is there yet."""
    data = config["data"]
    if storage.exists(storage.join(data["uri"], META_FILE)):
        if data["source"]:
            check_prepared_from(data, read_meta(data["uri"]))
        return data["uri"]
    if not data["source"]:
        raise DataError(f"no dataset at {data['uri']} and no data.source to prepare there")
    log(f"== preparing {data['source']} into {data['uri']} ==")
    meta = prepare(data["source"], data["uri"], seed=int(data["seed"]), synthetic=SyntheticSpec(**data["synthetic"]),
                   progress=log)
    log(f"prepared {meta.name}: {meta.counts}")
    from jobs.prepare import input_line

    log(input_line(meta))
    return data["uri"]


def check_prepared_from(data: dict, meta) -> None:
    """A dataset already at data.uri must come from the configured source and settings: otherwise changing,
    say, data.synthetic.classes would silently benchmark the old shards. Datasets that do not record their
    source (prepared before `_meta.json` carried it) are taken as they are."""
    if "source" not in meta.extra:
        return
    wanted = source_for(data["source"], int(data["seed"]), SyntheticSpec(**data["synthetic"])).describe()
    found = {key: meta.extra.get(key) for key in wanted}
    if isinstance(found.get("source"), str):  # imagefolder:PATH recorded relative, before paths were made absolute
        found["source"] = absolute_spec(found["source"])
    if found != wanted:
        differs = ", ".join(f"{key}: {found[key]} there, {wanted[key]} configured"
                            for key in wanted if found[key] != wanted[key])
        raise ConfigError(f"{data['uri']} holds a dataset prepared from other settings ({differs}); point "
                          "data.uri elsewhere or remove that dataset")


def _reusable(folder: str, fingerprint: dict) -> dict | None:
    """The saved info of a model made from the same settings, or None if there is none yet.

    A model made from other settings is an error, not silently replaced or reused: the models folder is
    shared across runs, and a stale gold model would skew every JSD and Avg Gap."""
    info_uri = storage.join(folder, "made.json")
    if not (storage.exists(storage.join(folder, "model.pt")) and storage.exists(info_uri)):
        return None
    info = json.loads(storage.read_text(info_uri))
    if _with_absolute_paths(info["fingerprint"]) != fingerprint:
        raise ConfigError(f"{folder} holds a model made from other settings ({info['fingerprint']}); "
                          f"remove it or point `models` elsewhere (wanted {fingerprint})")
    return info


def _with_absolute_paths(fingerprint):
    """A stored fingerprint with the relative paths that models made before paths were made absolute recorded
    (`data`, `weights`) read from the current folder, where such a bench ran: its models stay reusable."""
    if isinstance(fingerprint, dict):
        return {key: absolute(value) if key in ("data", "weights") and isinstance(value, str) else
                _with_absolute_paths(value) for key, value in fingerprint.items()}
    return fingerprint


def data_fingerprint(data: str, fingerprint: dict) -> dict:
    """A made model's fingerprint with the samples deletion requests removed from `data`: a model trained before
    a removal held the forgotten samples and must not be reused after it."""
    return with_data_removals(fingerprint, read_meta(data))


def _remember(folder: str, fingerprint: dict, result: dict) -> dict:
    info = {"fingerprint": fingerprint, "train_seconds": result.get("unlearn_seconds"),
            "epochs_run": result.get("epochs_run"), "evaluation": result.get("evaluation")}
    storage.write_text(storage.join(folder, "made.json"), json.dumps(info, indent=2, default=str))
    return info


def ensure_original(config: dict, data: str, models: str) -> str:
    """The original model's checkpoint: the config's, wrapped from the config's weights, or trained here."""
    original = config["original"]
    if original["checkpoint"]:
        return original["checkpoint"]
    folder = storage.join(models, "original")
    uri = storage.join(folder, "model.pt")
    if original["weights"]:
        fingerprint = data_fingerprint(data, {"weights": original["weights"], "model": config["model"], "data": data})
        if _reusable(folder, fingerprint) is None:
            wrap_weights(config, data, original["weights"], uri)
            _remember(folder, fingerprint, {})
        return uri
    fingerprint = data_fingerprint(data, {"data": data, "model": config["model"], "train": config["train"],
                                          "seed": original["seed"]})
    if _reusable(folder, fingerprint) is not None:
        log(f"== original model: reusing {uri} ==")
        return uri
    log("== original model: all of train ==")
    result = train_model(train_spec(config, data, folder, int(original["seed"])))
    _remember(folder, fingerprint, result)
    return uri


def train_model(spec: TrainSpec) -> dict:
    """Train a model of the bench (resuming the folder's unfinished training run of the same settings, or
    taking its finished one when made.json went missing), refusing a folder whose training run has other
    settings: a stale gold model would skew every JSD and Avg Gap."""
    from pipeline.runs.train import train  # torch and Ray: after the config and flags were checked

    try:
        return train(spec)
    except RerunRefused as exc:
        raise ConfigError(f"{exc.reason}; the same config (ray.workers included) resumes it: otherwise remove "
                          f"{spec.out} or point `models` elsewhere") from exc


def wrap_weights(config: dict, data: str, weights: str, uri: str) -> None:
    """A weights file that already is the trained model, as a project checkpoint (spec + state dict)."""
    from pipeline.models import checkpoint_from_weights, spec_for_data

    model = config["model"]
    spec = spec_for_data(model["name"], read_meta(data), model["image_size"], model["mean"], model["std"])
    log(f"== original model: {weights} as {spec.name} ({spec.num_classes} classes, {spec.image_size} px) ==")
    checkpoint_from_weights(spec, weights, uri)


def ensure_gold(config: dict, data: str, models: str, seed: int) -> tuple[str, dict]:
    """The gold model of this seed (trained on D_r) and its training info (seconds, epochs)."""
    folder = storage.join(models, f"gold-s{seed}")
    fingerprint = data_fingerprint(data, {"data": data, "model": config["model"], "train": config["train"],
                                          "seed": seed, "forget": config["forget"]})
    info = _reusable(folder, fingerprint)
    if info is not None:
        log(f"== gold model (seed {seed}): reusing {folder}/model.pt, trained in {info['train_seconds']:.1f} s ==")
        return storage.join(folder, "model.pt"), {**info, "reused": True}
    log(f"== gold model (seed {seed}): retrain on D_r of {config['forget']} ==")
    result = train_model(train_spec(config, data, folder, seed, retain_only=True))
    # Trained by an earlier bench that stopped before made.json: its training time was not measured in this run.
    return storage.join(folder, "model.pt"), {**_remember(folder, fingerprint, result),
                                              "reused": bool(result.get("finished_before"))}


def run_methods(config: dict, data: str, original: str, gold: str | None, gold_info: dict | None, seed: int,
                rows: list[str], run_uri: str) -> list[ResultRecord]:
    """`rows` (methods, and the `original` / `retrain` reference rows) one after another in one Ray Train fit.

    The retrain row is the gold model evaluated like any unlearned one (the `original` method started from
    it), in the same fit as the methods, with its training time standing as its unlearning time.
    """
    audits = ulira_audits(config, data, original, gold, seed, run_uri)
    runs = [retrain_row(config, gold, gold_info) if row == "retrain" else
            MethodRun(row, None if row == "original" else method_settings(config, row),
                      finalize=None if row == "original" else audits(row)) for row in rows]
    spec = RunSpec(data=DataSpec(uri=data, verify=False), original=original, runs=tuple(runs), out=run_uri,
                   forget=config["forget"], seed=seed, gold=gold, floor_draws=config["floor_draws"],
                   ray=ray_resources(config))
    log(f"== seed {seed}: {', '.join(rows)} in one Ray Train fit ==")
    from pipeline.runs.unlearn import unlearn  # torch and Ray: after the config and flags were checked

    return unlearn(spec, record_kind="unlearn")


def retrain_row(config: dict, gold: str, gold_info: dict) -> MethodRun:
    """The gold model as a method run: unchanged (`original` from it), recorded as `retrain` with its training time."""
    from pipeline.runs.train import training_recipe

    seconds = gold_info["train_seconds"]

    def finalize(record: ResultRecord) -> ResultRecord:
        return dataclasses.replace(
            record, kind="bench", unlearn_seconds=seconds, phases={**record.phases, "unlearn": seconds},
            config={**record.config, "retrain": training_recipe(config["train"]), "epochs_run": gold_info["epochs_run"],
                    "gold_reused": bool(gold_info.get("reused"))},
            notes="gold model: trained on D_r by `unlearn train --retain-only`; unlearn_seconds is its training time")

    return MethodRun("original", label="retrain", model_uri=gold, finalize=finalize)


def ulira_audits(config: dict, data: str, original: str, gold: str | None, seed: int, run_uri: str):
    """`audits(method)`: the finalize step of a method's run that audits its unlearned model with U-LiRA and adds
    the figures to its record (ulira_* metrics, the audit's summary in config["u_lira"]); None without u_lira.

    The original and the gold model are the audit's sanity anchors. An audit that fails on its own (too many
    shadows diverged) is noted in the record, not the end of the bench; a config error (a bank built for other
    data or another recipe) ends it."""
    if not config["u_lira"]["shadows"]:
        return lambda method: None
    from pipeline.errors import UnlearnError
    from pipeline.runs.audit_mia import audit, record_metrics

    def audits(method: str):
        def finalize(record: ResultRecord) -> ResultRecord:
            spec = ulira_spec(config, data, record.checkpoint_uri, method, original, gold, seed, run_uri)
            try:
                result = audit(spec)
            except ConfigError:
                raise
            except UnlearnError as exc:
                log(f"[{method}] U-LiRA audit failed: {exc}")
                return dataclasses.replace(record, config={**record.config, "u_lira": {"error": str(exc)}})
            summary = {"variant": result["variant"], "result": storage.join(spec.out, "ulira.json"),
                       "trusted": result["trusted"], "warnings": result["warnings"], "bank": result["bank"],
                       "seconds": result["seconds"]}
            return dataclasses.replace(record, metrics={**record.metrics, **record_metrics(result)},
                                       config={**record.config, "u_lira": summary})
        return finalize

    return audits


def ulira_spec(config: dict, data: str, model: str, method: str, original: str, gold: str | None, seed: int,
               run_uri: str):
    """The AuditSpec of one method's unlearned model: the config's forget spec, training recipe and settings."""
    from pipeline.runs.audit_mia import AuditSpec
    from pipeline.runs.shadows import TaskResources

    section = config["u_lira"]
    return AuditSpec(data=DataSpec(uri=data, verify=False), model=model, forget=config["forget"], method=method,
                     bank=ulira_bank(config, run_uri), out=storage.join(run_uri, "ulira", f"{method}-s{seed}"),
                     shadows=int(section["shadows"]), variant=section["variant"],
                     settings=method_settings(config, method), recipe=config["train"], seed=seed, original=original,
                     gold=gold, fprs=tuple(float(f) for f in section["fpr"]), resamples=int(section["resamples"]),
                     resources=TaskResources(gpus=bool(config["ray"]["gpus"]),
                                             max_failures=int(config["ray"]["max_failures"])))


def ulira_bank(config: dict, run_uri: str) -> str:
    return config["u_lira"]["bank"] or storage.join(config["models"] or run_uri, "ulira-bank")


def check_ulira_shadows(config: dict, data: str) -> None:
    """Refuse, before any training, a K too small for the config's FPRs on this forget set (needs the index)."""
    section = config["u_lira"]
    if not section["shadows"] or section["variant"] != "online":
        return
    from pipeline.data.shards import read_index
    from pipeline.data.splits import make_splits
    from pipeline.metrics.ulira import check_shadow_count
    from pipeline.runs.audit_mia import choose_candidates

    meta = read_meta(data)
    index = read_index(data, meta)
    for seed in config["seeds"]:
        candidates = choose_candidates(index, make_splits(index, config["forget"], seed, meta.num_classes), seed)
        try:
            check_shadow_count(int(section["shadows"]), [float(f) for f in section["fpr"]],
                               len(candidates.sample_ids))
        except ConfigError as exc:
            raise ConfigError(f"u_lira.shadows: {exc}") from None


# ---- the run ---------------------------------------------------------------------------------------------


def rows_done(run_uri: str) -> set[tuple[str, int]]:
    """(method, seed) pairs already recorded under the run URI (an interrupted run being continued)."""
    if not storage.list_files(storage.join(run_uri, "records"), ".json"):
        return set()
    from pipeline.results.records import load_records

    return {(record.method, record.seed) for record in load_records(run_uri)}


def rows_wanted(config: dict) -> list[str]:
    return ["original", *(["retrain"] if config["gold"] else []), *config["methods"]]


def run_seed(config: dict, data: str, original: str, models: str, seed: int, missing: list[str],
             run_uri: str) -> None:
    gold, gold_info = ensure_gold(config, data, models, seed) if config["gold"] else (None, None)
    run_methods(config, data, original, gold, gold_info, seed, missing, run_uri)


def run_bench(config: dict, run_uri: str, compare_with: list[str] = (), mlflow: str | None = None) -> int:
    """Run every missing (row, seed) of the config under run_uri, write the report; 1 if anything regressed."""
    started = time.perf_counter()
    storage.ensure_bucket(run_uri)
    storage.write_text(storage.join(run_uri, "bench.yaml"), yaml.safe_dump(config, sort_keys=False))
    done, wanted = rows_done(run_uri), rows_wanted(config)
    todo = {seed: [row for row in wanted if (row, seed) not in done] for seed in config["seeds"]}
    if any(todo.values()):
        data = ensure_data(config)
        check_ulira_shadows(config, data)
        if config["data"]["verify"]:
            log(f"verifying the shards' sha256 at {data}")
            verify_checksums(data, read_meta(data))
        models = config["models"] or run_uri
        original = ensure_original(config, data, models)
        for seed, missing in todo.items():
            if missing:
                run_seed(config, data, original, models, seed, missing, run_uri)
            else:
                log(f"== seed {seed}: every row already recorded under {run_uri} ==")
    from pipeline.results.records import load_records
    from pipeline.results.regression import DEFAULT_BANDS

    bands = config["bands"] or DEFAULT_BANDS
    written = publish([run_uri], previous_uris=list(compare_with), bands=bands,
                      title=config["name"], method_order=config["methods"])
    records = load_records(run_uri)
    log(time_ratio_line(records, config["methods"]))
    track(mlflow, run_uri, [r for r in records if r.kind != "sweep-trial"],
          [uri for name, uri in written.items() if name.endswith((".html", ".md", ".csv"))],
          tags={"bench": config["name"] or run_uri})
    log(f"bench finished in {time.perf_counter() - started:.0f} s; records under {run_uri}; "
        f"report {written['report.html']}")
    if compare_with and regression_check([run_uri], list(compare_with), bands):
        return 1
    return 0


def check_cluster(ray: dict, config_uri: str, cluster_uri: str | None) -> None:
    """With --cluster: refuse a worker group the launcher file's cluster can never start (the autoscaler would
    wait for it all night), naming both numbers; say that it fits otherwise."""
    if not cluster_uri:
        return
    from pipeline.cluster import check_fits

    workers = int(ray["workers"])
    room = check_fits(workers, bool(ray.get("gpus", False)), float(ray.get("cpus_per_worker", 1.0)),
                      load_yaml(cluster_uri), config_uri, cluster_uri)
    log(f"{config_uri}: {workers} Ray Train worker(s) fit {cluster_uri}, which holds up to {room.workers} "
        f"({'; '.join(room.lines)})")


def diffusion_bench(args: argparse.Namespace, argv: list[str]) -> int:
    """A `family: diffusion` config: the diffusion benchmark (jobs/diffusion.py, docs/diffusion.md)."""
    from jobs import diffusion

    unsupported = [flag for flag, value in (("--compare", args.compare), ("--methods", args.methods),
                                            ("--best-configs", args.best_configs), ("--mlflow", args.mlflow)) if value]
    if unsupported:
        raise ConfigError(f"{args.config} is a diffusion benchmark, which takes no {', '.join(unsupported)}")
    return diffusion.bench_main(argv)


def time_ratio_line(records: list[ResultRecord], methods: list[str]) -> str:
    """LoTUS's mean unlearning time over retrain's (the gold model's training time), per table."""
    from pipeline.results.aggregate import summarize

    summaries = summarize(records, method_order=methods)
    lines = []
    for summary in summaries:
        if summary.method != HEADLINE_METHOD:
            continue
        retrain = next((s for s in summaries if s.group == summary.group and s.method == "retrain"), None)
        where = f"{summary.dataset} · {summary.model} · forget {summary.forget_spec}"
        if retrain is None or summary.time_ratio is None:
            lines.append(f"LoTUS time / retrain time ({where}): no retrain time to compare with (gold: false); "
                         f"LoTUS took {_seconds(summary.mean('unlearn_seconds'))}")
        else:
            reused = sorted(r.seed for r in records if r.method == "retrain" and r.config.get("gold_reused")
                            and (r.dataset, r.model, r.forget_spec) == summary.group)
            # A reused gold model brings the training time of the run that made it: say so, not "same run".
            origin = (f"; retrain time of seed(s) {', '.join(map(str, reused))} measured when their reused gold "
                      "models were trained, not in this run" if reused else ", both measured in this run")
            lines.append(f"LoTUS time / retrain time ({where}): {summary.time_ratio:.3f} "
                         f"({_seconds(summary.mean('unlearn_seconds'))} vs {_seconds(retrain.mean('unlearn_seconds'))}, "
                         f"mean over {len(summary.seeds)} seed(s){origin})")
    return "\n".join(lines) or f"LoTUS time / retrain time: {HEADLINE_METHOD} is not among the methods run"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    apply_endpoint(args)
    if load_yaml(args.config).get("family", "classifier") == "diffusion":
        from jobs.diffusion import load_bench_config

        check_cluster(load_bench_config(args.config, args.set, args.seeds)["ray"], args.config, args.cluster)
        return diffusion_bench(args, argv)
    config = load_config(args.config, args.set, args.seeds, args.methods, args.best_configs)
    check_cluster(config["ray"], args.config, args.cluster)
    run_uri = absolute(args.out) or default_run_uri(config)
    log(f"bench {config['name'] or args.config}: {len(config['methods'])} method(s) x seeds {config['seeds']} "
        f"-> {run_uri}")
    check_mlflow(args.mlflow, run_uri)
    compare_with = [absolute(uri) for uri in args.compare]
    warn_without_records(compare_with)
    return run_bench(config, run_uri, compare_with, mlflow=args.mlflow)


if __name__ == "__main__":
    sys.exit(run_main(main))
