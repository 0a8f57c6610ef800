"""Does the diffusion family still give the same results? For a change that must not change behaviour (a move of
modules, a renamed method): a short, seeded, in-process (no Ray) run on the tests' tiny setting.

    python -m benchmarks.diffusion_same_results --out /tmp/before.json           # before the change
    python -m benchmarks.diffusion_same_results --out /tmp/after.json            # after it
    cmp /tmp/before.json /tmp/after.json

    python -m benchmarks.diffusion_same_results --safemax safemax-cutoff --out /tmp/after.json   # a renamed method

It trains the tests' DDPM (tests/test_diffusion.py's TEST_SPEC: 16x16 digits, widths 16/32/32, linear schedule)
and the metrics classifier for two epochs each, unlearns class 3 with the method named by --safemax and with
relabel (two short epochs each), evaluates every model from generated samples (10 per class, 10 DDIM steps,
guidance 2), runs the relearning attack for 2 and 4 steps and draws the sample grid; then writes a JSON of every
metric but the timings, and the sha256 of each model's weights and of the grid PNG. One torch thread, so the
arithmetic is the same from run to run on one machine. About a minute on one CPU core.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import tempfile

import torch

from pipeline.data.converters import prepare
from pipeline.methods.base import UnlearnData
from pipeline.methods.diffusion_base import unlearn_ddpm
from pipeline.methods.diffusion_training import train_classifier, train_ddpm
from pipeline.metrics.diffusion import evaluate_ddpm, real_retained_pixels, relearning_attack
from pipeline.metrics.diffusion_grid import sample_grid_png
from pipeline.models.diffusion import DiffusionSpec, load_diffusion_checkpoint, save_diffusion_checkpoint
from pipeline.models.diffusion_classifier import classifier_spec
from pipeline.models.diffusion_data import load_diffusion_sources
from pipeline.models.diffusion_process import SamplingPlan
from pipeline.runs.diffusion import checked_settings

CPU = torch.device("cpu")
FORGET, SEED, CLASSES = 3, 3407, 10
SPEC = {"num_classes": 10, "channels": 1, "image_size": 16, "widths": [16, 32, 32], "schedule": "linear"}
UNLEARN = {"epochs": 2, "steps_per_epoch": 5}
PLAN = {"per_class": 10, "steps": 10, "guidance": 2.0, "seed": SEED, "clip": True}
TIMING_WORDS = ("seconds", "minutes", "peak_memory")


def weights_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def untimed(value):
    if isinstance(value, dict):
        return {key: untimed(item) for key, item in value.items() if not any(word in key for word in TIMING_WORDS)}
    if isinstance(value, list):
        return [untimed(item) for item in value]
    return value


def run(safemax: str, folder: pathlib.Path) -> dict:
    data = str(folder / "digits")
    prepare("digits", data, seed=0)
    sources = load_diffusion_sources(data, FORGET, SEED, 16)
    spec = DiffusionSpec(**SPEC)
    ddpm, train_report = train_ddpm(spec, sources["train"], CPU, seed=0, settings={"epochs": 2})
    save_diffusion_checkpoint(ddpm, spec, str(folder / "ddpm.pt"))
    classifier, _ = train_classifier(classifier_spec(CLASSES, 1, 16), sources["train"], CPU, settings={"epochs": 2})
    reference = real_retained_pixels({"unseen": sources["unseen"], "test": sources["test"]}, [FORGET])
    plan = SamplingPlan(**PLAN)
    out = {"original": {"weights_sha256": weights_sha256(ddpm), "history": untimed(train_report.history),
                        "metrics": untimed(evaluate_ddpm(ddpm, classifier, reference, [FORGET], CLASSES, plan, CPU))},
           "classifier": {"weights_sha256": weights_sha256(classifier)}}
    models = {"original": ddpm}
    for label, method in (("safemax", safemax), ("relabel", "relabel")):
        model = load_diffusion_checkpoint(str(folder / "ddpm.pt"))[0]
        original = load_diffusion_checkpoint(str(folder / "ddpm.pt"))[0]
        data_sets = UnlearnData(forget=sources["forget"], retain=sources["retain"], num_classes=CLASSES,
                                forget_classes=(FORGET,))
        settings = checked_settings(method, UNLEARN, spec.timesteps, PLAN["guidance"])  # guidance tied to PLAN's w
        report, _ = unlearn_ddpm(method, settings, model, original, data_sets, CPU, seed=SEED, log=None)
        metrics = evaluate_ddpm(model, classifier, reference, [FORGET], CLASSES, plan, CPU)
        metrics["relearn"] = relearning_attack(model, sources["forget"].images[:8], FORGET, classifier,
                                               SamplingPlan(**{**PLAN, "seed": SEED + 1}), CPU, checkpoints=(2, 4),
                                               seed=SEED)
        out[label] = {"weights_sha256": weights_sha256(model), "history": untimed(report.history),
                      "metrics": untimed(metrics)}
        models[label] = model
    grid = sample_grid_png(models, CLASSES, SamplingPlan(**{**PLAN, "per_class": 2}), CPU)
    out["grid_png_sha256"] = hashlib.sha256(grid).hexdigest()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--safemax", default="safemax", help="the diffusion method run in the `safemax` slot")
    parser.add_argument("--out", required=True, help="where the JSON goes")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        result = run(args.safemax, pathlib.Path(folder))
    text = json.dumps(result, indent=1, sort_keys=True)
    pathlib.Path(args.out).write_text(text + "\n")
    print(f"{args.out}: sha256 of the JSON {hashlib.sha256(text.encode()).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
