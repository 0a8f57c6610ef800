"""Diffusion-family runs: one typed run specification (`DiffusionRun`), the loop's runs planned from it, the Ray
Train fit (pipeline/train/diffusion_loop.py) and the result records. jobs/diffusion.py builds a DiffusionRun from
the command line, and its benchmark from a bench config.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from pipeline import storage
from pipeline.errors import ConfigError
from pipeline.methods import DIFFUSION_REGISTRY, create_diffusion_method
from pipeline.results.records import ResultRecord, append_record, load_records, new_run_id
from pipeline.runs.common import Phases, check_output_uri, open_dataset, use_endpoint, versions
from pipeline.runs.spec import DataSpec, RayResources, check_name
from pipeline.runs.identity import check_rerun, remember_identity
from pipeline.train.console import log

TRAINING_METHODS = ("train", "retrain", "original")
METHODS = (*TRAINING_METHODS, *DIFFUSION_REGISTRY)
SETS = ["mixed", "forget", "retain_all", "unseen", "test"]  # "mixed": all of train (D_f ∪ D_r)
ATTACK = {"images": 8, "steps": [10, 50, 100], "lr": 1e-3}


@dataclass(frozen=True)
class Evaluation:
    """How generated samples are drawn and judged."""

    per_class: int = 100
    steps: int = 25  # DDIM steps
    guidance: float = 2.0  # classifier-free guidance scale (1: none)
    attack: bool = False  # relearning attack on the forgotten class after 10/50/100 steps
    inception_weights: str | None = None  # a local inception_v3 state dict: adds real FID

    def check(self) -> None:
        if self.per_class < 2:
            raise ConfigError(f"--samples-per-class must be at least 2, not {self.per_class}")
        if self.steps < 1:
            raise ConfigError(f"--sampling-steps must be at least 1, not {self.steps}")
        if self.guidance < 1:
            raise ConfigError(f"--guidance must be at least 1, not {self.guidance}")
        if self.inception_weights and not storage.exists(self.inception_weights):
            raise ConfigError(f"--inception-weights {self.inception_weights}: no such file")

    def sampling(self, seed: int) -> dict:
        return {"per_class": self.per_class, "steps": self.steps, "guidance": self.guidance, "seed": seed,
                "clip": True}


@dataclass(frozen=True)
class DiffusionRun:
    """One diffusion-family command: train | retrain | original | an unlearning method, on one forgotten class."""

    data: DataSpec
    method: str
    out: str
    forget: str = "class:3"
    seed: int = 3407
    original: str | None = None  # the original DDPM (from `train`); needed to unlearn or evaluate
    classifier: str | None = None  # the metrics classifier (from `train`)
    settings: dict = field(default_factory=dict)  # {"unet": {...}, "train": {...}, "classifier": {...}, METHOD: {...}}
    name: str | None = None
    overwrite: bool = False  # start afresh a run of this name that OUT holds with other settings
    evaluation: Evaluation = field(default_factory=Evaluation)
    ray: RayResources = field(default_factory=RayResources)

    def check(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r} for the diffusion family; available: {', '.join(METHODS)}")
        unknown = sorted(set(self.settings) - {"unet", "train", "classifier", *DIFFUSION_REGISTRY})
        if unknown:
            raise ConfigError(f"--set names {unknown}; known: unet, train, classifier, {', '.join(DIFFUSION_REGISTRY)}")
        self.data.check()
        self.ray.check()
        self.evaluation.check()
        check_name(self.name, "--name")
        if self.method not in ("train", "retrain") and not (self.original and self.classifier):
            raise ConfigError(f"--method {self.method} needs --original DDPM and --classifier (from --method train)")

    @property
    def run_name(self) -> str:
        return self.name or f"{self.method}-s{self.seed}"

    def identity(self, method_settings: dict | None = None) -> dict:
        """What makes this command's run this run: a rerun resumes it, or returns its record once finished.
        `method_settings`: an unlearning method's resolved settings (defaults included)."""
        from pipeline.train.runner import absolute

        settings = self.settings if method_settings is None else {**self.settings, self.method: method_settings}
        identity = {"family": "diffusion", "method": self.method, "data": absolute(self.data.uri),
                    "forget": self.forget, "seed": self.seed, "settings": settings,
                    "original": absolute(self.original) if self.original else None,
                    "classifier": absolute(self.classifier) if self.classifier else None,
                    "evaluation": dataclasses.asdict(self.evaluation)}
        return json.loads(json.dumps(identity))  # as it reads back from the file


def forget_class(spec: str, num_classes: int) -> int:
    kind, _, value = spec.partition(":")
    if kind != "class" or not value.strip().isdigit():
        raise ConfigError(f"the diffusion family forgets one whole class: --forget class:C, not {spec!r}")
    chosen = int(value)
    if not 0 <= chosen < num_classes:
        raise ConfigError(f"--forget {spec}: the data has classes 0..{num_classes - 1}, so class {chosen} does not exist")
    return chosen


def unet_spec(meta, overrides: dict) -> dict:
    from pipeline.models.diffusion import DiffusionSpec

    try:
        spec = DiffusionSpec(**{"num_classes": meta.num_classes, "channels": meta.channels, **overrides})
    except TypeError as exc:
        raise ConfigError(f"unet settings: {exc}") from exc
    spec.validate()
    return dataclasses.asdict(spec)


def checked_settings(method: str, settings: dict, num_timesteps: int, guidance: float | None = None) -> dict:
    """A method's resolved settings, each value checked on the driver (t_min against the model's timesteps).
    `guidance`: the w the run evaluates at; a method's guidance correction is tied to it (`guidance: eval` takes
    it, another number > 1 is refused: pipeline/methods/safemax.py tie_guidance)."""
    instance = create_diffusion_method(method, settings, log=None)
    instance.tie_guidance(guidance)
    instance.check(num_timesteps)
    return instance.config


def evaluate_run(name: str, model_uri: str, classifier: str, evaluation: Evaluation, seed: int,
                 attack: bool | None = None) -> dict:
    from pipeline.train.runner import absolute

    attack = evaluation.attack if attack is None else attack
    return {"kind": "evaluate", "name": name, "model_uri": model_uri, "classifier_uri": absolute(classifier),
            "sampling": evaluation.sampling(seed), "attack": ATTACK if attack else None,
            "inception_weights": evaluation.inception_weights}


def plan_runs(run: DiffusionRun, meta) -> tuple[list[dict], int]:
    """The loop's runs for one command, and the image size the data is decoded at."""
    from pipeline.train.runner import absolute

    out, name = absolute(run.out), run.run_name
    if run.method in ("train", "retrain"):
        spec = unet_spec(meta, run.settings.get("unet", {}))
        model_out = storage.join(out, "ddpm.pt" if run.method == "train" else f"{name}.pt")
        runs = [{"kind": "ddpm", "name": f"{name}-ddpm", "spec": spec, "settings": run.settings.get("train", {}),
                 "train_set": "mixed" if run.method == "train" else "retain_all", "model_out": model_out}]
        classifier = run.classifier
        if run.method == "train":
            classifier = storage.join(out, "classifier.pt")
            runs.append({"kind": "classifier", "name": f"{name}-classifier", "model_out": classifier,
                         "settings": run.settings.get("classifier", {})})
        if classifier:
            runs.append(evaluate_run(f"{name}-eval", model_out, classifier, run.evaluation, run.seed))
        return runs, spec["image_size"]
    from pipeline.models.diffusion import load_diffusion_checkpoint

    _, spec, _ = load_diffusion_checkpoint(run.original)
    if spec.num_classes != meta.num_classes:
        raise ConfigError(f"{run.original} generates {spec.num_classes} classes but {run.data.uri} has "
                          f"{meta.num_classes}")
    if run.method == "original":
        return [evaluate_run(f"{name}-eval", absolute(run.original), run.classifier, run.evaluation, run.seed)], \
            spec.image_size
    settings = checked_settings(run.method, run.settings.get(run.method, {}), spec.timesteps, run.evaluation.guidance)
    model_out = storage.join(out, f"{name}.pt")
    return [{"kind": "unlearn", "name": name, "method": run.method, "settings": settings,
             "original_uri": absolute(run.original), "model_out": model_out},
            evaluate_run(f"{name}-eval", model_out, run.classifier, run.evaluation, run.seed)], spec.image_size


def fit(run: DiffusionRun, runs: list[dict], meta, index, chosen: int, image_size: int, fit_name: str) -> list[dict]:
    """Plan the sets, run the loop through Ray Train (a rerun of the same fit resumes), return every run's result."""
    from pipeline.data.splits import make_splits
    from pipeline.train.datasets import plan_sets
    from pipeline.train.diffusion_loop import diffusion_loop
    from pipeline.train.runner import init_ray, run_trainer

    splits = make_splits(index, f"class:{chosen}", run.seed, meta.num_classes)
    init_ray(run.ray.workers, run.ray.cpus_per_worker)
    plan = plan_sets(run.data.uri, meta, splits, SETS, image_size, (), run.data.mode)
    loop_config = {"seed": run.seed, "data_plan": plan, "cache_mb": run.data.cache_mb,
                   "num_classes": meta.num_classes, "channels": meta.channels, "image_size": image_size,
                   "forget_classes": [chosen], "runs": runs}
    return run_trainer(loop_config, run.out, name=fit_name, workers=run.ray.workers, use_gpu=run.ray.gpus,
                       cpus_per_worker=run.ray.cpus_per_worker, max_failures=run.ray.max_failures,
                       loop=diffusion_loop)


def make_record(run: DiffusionRun, dataset: str, label: str, settings: dict, evaluation: dict, trained: dict | None,
                phases: dict, checkpoint: str | None, kind: str = "unlearn", notes: str = "") -> ResultRecord:
    from pipeline.metrics.diffusion import flat_metrics

    result = ResultRecord(
        run_id=new_run_id(kind, label, run.seed), kind=kind, method=label, dataset=dataset, model="unet",
        seed=run.seed, forget_spec=run.forget,
        config={"family": "diffusion", "method": run.method if kind == "unlearn" else label, "settings": settings,
                "data": run.data.uri, "original": run.original, "classifier": run.classifier,
                "workers": run.ray.workers, "evaluation": run.evaluation.sampling(run.seed),
                "history": (trained or {}).get("history", [])},
        metrics=flat_metrics(evaluation, trained), phases=phases,
        unlearn_seconds=(trained or {}).get("unlearn_seconds"), workers=run.ray.workers,
        gpus=run.ray.workers if run.ray.gpus else 0, versions=versions(), checkpoint_uri=checkpoint,
        checkpoint_sha256=(trained or {}).get("checkpoint_sha256"), notes=notes)
    append_record(run.out, result)
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


def prepare_run(run: DiffusionRun):
    """Everything checked before Ray starts: (meta, index, forgotten class)."""
    use_endpoint(run.data.s3_endpoint)
    run.check()
    check_output_uri(run.out)
    meta, index = open_dataset(run.data)
    return meta, index, forget_class(run.forget, meta.num_classes)


def run_diffusion(run: DiffusionRun) -> ResultRecord | None:
    """One command: fit its runs through Ray Train, record the evaluated model (None if nothing was evaluated).
    A rerun resumes the fit; once a run is recorded, an identical rerun returns its record and runs nothing."""
    phases = Phases()
    meta, index, chosen = prepare_run(run)
    runs, image_size = plan_runs(run, meta)
    identity = run.identity(next((r["settings"] for r in runs if r["kind"] == "unlearn"), None))
    finished = check_rerun(run.out, run.run_name, identity, run.overwrite)
    if finished:
        log(f"run {run.run_name!r} under {run.out} is complete (record {finished}); nothing to do")
        return next(record for record in load_records(run.out) if record.run_id == finished)
    remember_identity(run.out, run.run_name, identity)
    phases.lap("startup")
    results = fit(run, runs, meta, index, chosen, image_size, run.run_name)
    phases.lap("run")
    by_name = {r["name"]: result for r, result in zip(runs, results)}
    trained = next((by_name[r["name"]] for r in runs if r["kind"] in ("ddpm", "unlearn")), None)
    evaluated = next((r for r in runs if r["kind"] == "evaluate"), None)
    if evaluated is None:
        log(f"models under {run.out} (no --classifier: not evaluated)")
        return None
    settings = next((r.get("settings", {}) for r in runs if r["kind"] in ("ddpm", "unlearn")), {})
    record = make_record(run, meta.name, run.method, settings, by_name[evaluated["name"]]["metrics"], trained,
                         phases.total(), evaluated["model_uri"])
    remember_identity(run.out, run.run_name, identity, record.run_id)
    print_metrics(run.method, record.metrics)
    log(f"models and records under {run.out}")
    return record
