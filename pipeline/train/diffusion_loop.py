"""The Ray Train worker loop of the diffusion family: train a DDPM (original or retrained-without-class gold),
train the metrics classifier, unlearn a class (safemax, relabel), evaluate from generated samples, attack.

Thin glue like pipeline/train/loop.py: the work is in plain functions below it, the model and sampling in
pipeline/models (diffusion*.py), training and unlearning in pipeline/methods (diffusion_training.py,
diffusion_base.py, safemax.py, diffusion_relabel.py) and evaluation in pipeline/metrics/diffusion.py. `config["runs"]` is a list of runs done one after another
in one worker group (one Ray start-up); each run is {"kind": "ddpm" | "classifier" | "unlearn" | "evaluate",
"name", ...}. Training and unlearning runs checkpoint every epoch; a restarted or rerun fit skips runs already
finished (their results are stored under the run folder) and resumes the unfinished one from its newest epoch
checkpoint. DDP over the workers as the classifier loop; evaluation (sampling, the classifier, the attack) runs
on rank 0 and its result is broadcast, because it reads all reference images and its samples are few.
"""

from __future__ import annotations

import json
import os
import tempfile

import torch

from pipeline import distributed, storage
from pipeline.data.sources import TensorSource
from pipeline.distributed import unwrap
from pipeline.methods.base import UnlearnData
from pipeline.methods.diffusion_base import unlearn_ddpm
from pipeline.methods.diffusion_training import train_classifier, train_ddpm
from pipeline.metrics.diffusion import evaluate_ddpm, real_retained_pixels, relearning_attack
from pipeline.models import load_checkpoint, save_checkpoint
from pipeline.models.diffusion import (DiffusionSpec, build_diffusion_model, load_diffusion_checkpoint,
                                       save_diffusion_checkpoint)
from pipeline.models.diffusion_classifier import classifier_spec
from pipeline.models.diffusion_process import SamplingPlan
from pipeline.train.checkpoints import MODEL_FILE, STATE_FILE
from pipeline.train.console import quiet_worker_reports
from pipeline.train.loop import newest_first, scalars
from pipeline.train.ray_sources import DEFAULT_CACHE_MB, worker_sources

RESULTS_DIR = "results"


def diffusion_loop(config: dict) -> list[dict]:
    import ray.train.torch

    quiet_worker_reports()
    device = ray.train.torch.get_device()
    sources, _ = worker_sources(config["data_plan"], float(config.get("cache_mb", DEFAULT_CACHE_MB)), device)
    results = []
    for run in config["runs"]:
        run = {**config, **run}
        done = _stored_result(run)
        if done is None:
            done = RUNS[run["kind"]](run, sources, device)
            if distributed.rank() == 0:
                storage.write_text(_result_uri(run), json.dumps(done))
        results.append(done)
        distributed.barrier()
    return results


# ---- runs -----------------------------------------------------------------------------------------------------
def _train_ddpm_run(run: dict, sources: dict, device) -> dict:
    spec = DiffusionSpec(**run["spec"])
    model = _prepared(build_diffusion_model(spec), device)
    reporter = _epoch_reporter(run, lambda m, uri: save_diffusion_checkpoint(m, spec, uri))
    resume = _resume_state(run)
    _, report = train_ddpm(spec, sources[run["train_set"]], device, run["seed"], run.get("settings"), model=model,
                           on_epoch_end=reporter, resume=resume, log=print)
    sha = save_diffusion_checkpoint(unwrap(model), spec, run["model_out"]) if distributed.rank() == 0 else None
    return _run_result(run, report, sha, resume)


def _train_classifier_run(run: dict, sources: dict, device) -> dict:
    spec = classifier_spec(run["num_classes"], run["channels"], run["image_size"])
    reporter = _epoch_reporter(run, lambda m, uri: save_checkpoint(m, spec, uri))
    resume = _resume_state(run)
    model, report = train_classifier(spec, sources["mixed"], device, run["seed"], run.get("settings"),
                                     on_epoch_end=reporter, resume=resume)
    from pipeline.methods.accuracy import accuracy

    test_accuracy = accuracy(model, sources["test"], device)
    sha = save_checkpoint(model, spec, run["model_out"]) if distributed.rank() == 0 else None
    return {**_run_result(run, report, sha, resume), "test_accuracy": test_accuracy}


def _unlearn_run(run: dict, sources: dict, device) -> dict:
    model, _, _ = load_diffusion_checkpoint(run["original_uri"])
    original = load_diffusion_checkpoint(run["original_uri"])[0].to(device).eval()
    model = _prepared(model, device)
    data = UnlearnData(forget=sources["forget"], retain=sources["retain_all"], num_classes=run["num_classes"],
                       forget_classes=tuple(run["forget_classes"]))
    spec = unwrap(model).spec
    reporter = _epoch_reporter(run, lambda m, uri: save_diffusion_checkpoint(m, spec, uri))
    resume = _resume_state(run)
    report, memory = unlearn_ddpm(run["method"], run.get("settings"), model, original, data, device, run["seed"],
                                  on_epoch_end=reporter, resume=resume, log=print)
    sha = save_diffusion_checkpoint(unwrap(model), spec, run["model_out"]) if distributed.rank() == 0 else None
    return {**_run_result(run, report, sha, resume), **memory}


def _evaluate_run(run: dict, sources: dict, device) -> dict:
    """Rank 0 evaluates `model_uri` (and attacks it when `attack` is set); every worker returns its result."""
    reference = _gathered(sources["unseen"], sources["test"])
    forget = _gathered(sources["forget"])
    result = None
    if distributed.rank() == 0:
        model = load_diffusion_checkpoint(run["model_uri"])[0].to(device)
        classifier = load_checkpoint(run["classifier_uri"])[0].to(device)
        plan = SamplingPlan(**run.get("sampling", {}))
        forget_classes = run["forget_classes"]
        reference_pixels = real_retained_pixels({"reference": reference}, forget_classes)
        inception = _inception(run.get("inception_weights"))
        by_id = torch.from_numpy(forget.sample_ids.argsort(kind="stable"))  # the leakage probes' real images
        result = {"metrics": evaluate_ddpm(model, classifier, reference_pixels, forget_classes, run["num_classes"],
                                           plan, device, inception, forget_images=forget.images[by_id])}
        if run.get("attack"):
            attack = run["attack"]
            order = torch.from_numpy(forget.sample_ids.argsort(kind="stable"))[: int(attack.get("images", 8))]
            attack_plan = SamplingPlan(**{**run.get("sampling", {}), "seed": plan.seed + 1})
            result["metrics"]["relearn"] = relearning_attack(
                model, forget.images[order], forget_classes[0], classifier, attack_plan, device,
                checkpoints=tuple(attack.get("steps", (10, 50, 100))), lr=float(attack.get("lr", 1e-3)),
                seed=run["seed"])
    return distributed.broadcast_object(result, 0)


RUNS = {"ddpm": _train_ddpm_run, "classifier": _train_classifier_run, "unlearn": _unlearn_run,
        "evaluate": _evaluate_run}


# ---- helpers --------------------------------------------------------------------------------------------------
def _prepared(model, device):
    import ray.train.torch

    model = model.to(device)
    if distributed.world_size() > 1:
        model = ray.train.torch.prepare_model(model, move_to_device=False)
    return model


def _run_result(run: dict, report, sha: str | None, resume: dict | None) -> dict:
    return {"name": run["name"], "kind": run["kind"], "unlearn_seconds": report.unlearn_seconds,
            "epoch_report_seconds": report.epoch_report_seconds, "epochs_run": report.epochs_run,
            "history": report.history, "checkpoint_sha256": distributed.broadcast_object(sha, 0),
            "resumed_after_epoch": resume["epoch"] if resume else None}


def _gathered(*sources) -> TensorSource:
    """Every worker's share of `sources`, joined on every worker (small sets: the held-out splits, D_f)."""
    parts = []
    for source in sources:
        for batch in source.batches(512):
            parts.append((batch["image"].cpu(), batch["label"].cpu(), list(batch["sample_id"])))
    everything = [part for worker in distributed.all_gather_objects(parts) for part in worker]
    if not everything:
        return TensorSource(torch.zeros(0, 1, 1, 1, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), [])
    return TensorSource(torch.cat([p[0] for p in everything]), torch.cat([p[1] for p in everything]),
                        [i for p in everything for i in p[2]])


def _inception(path: str | None):
    if not path:
        return None
    from pipeline.metrics.diffusion_inception import InceptionFeatures

    return InceptionFeatures(path)


def _result_uri(run: dict) -> str:
    return storage.join(run["run_folder"], RESULTS_DIR, f"{run['name']}.json")


def _stored_result(run: dict) -> dict | None:
    """The result of a run this fit (or an earlier attempt of it) already finished, else None."""
    uri = _result_uri(run)
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else None


def _epoch_reporter(run: dict, save_model):
    """on_epoch_end: every rank reports (a barrier); rank 0 attaches {model.pt, state.pt} with the run's name, so a
    resumed fit knows which of its runs the checkpoint belongs to."""
    import ray.train

    def report(epoch: int, model, entry: dict) -> None:
        method_states = distributed.all_gather_objects(_method_state(model))
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if distributed.rank() == 0:
                save_model(unwrap(model), os.path.join(directory, MODEL_FILE))
                torch.save({"run": run["name"], "epoch": epoch, "method_states": method_states},
                           os.path.join(directory, STATE_FILE))
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report({**scalars(entry), "epoch": epoch, "run": run["name"]}, checkpoint=checkpoint)

    return report


def _method_state(model) -> dict:
    """The random state the next epoch depends on (torch's generator; the methods' own generators restart from
    their seeds, so a resumed run draws other noise than an uninterrupted one, which the docs state)."""
    return {"torch_rng": torch.get_rng_state()}


def _resume_state(run: dict) -> dict | None:
    """The newest checkpoint of this run (by name) in the fit's folder, as the shared loop's `resume`, or None."""
    for checkpoint in newest_first(run["run_folder"]):
        try:
            with checkpoint.as_directory() as directory:
                state = torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=True)
                if state.get("run") != run["name"]:
                    continue
                model = torch.load(os.path.join(directory, MODEL_FILE), map_location="cpu", weights_only=True)
        except Exception:  # half-written: the worker died while writing it
            continue
        return {"epoch": int(state["epoch"]), "model": model["state_dict"], "optimizer": None, "method_state": None}
    return None
