"""Issue 33 §1's measurements on the digits setting (configs/diffusion-digits.yaml's recipe, in process, no Ray):

    python -m benchmarks.diffusion_study guidance --work runs/study/diffusion    # forgetting/retention at w = 1..5
    python -m benchmarks.diffusion_study leakage --work runs/study/diffusion     # null-label and SDEdit probes
    python -m benchmarks.diffusion_study decay --work runs/study/diffusion       # the λ ablation: 0, 1, 50, 100

It prepares digits under WORK, trains (once, cached under WORK/models) the bench's original DDPM (40 epochs, Adam
2e-3, batch 64, widths 16/32/32 at 16x16), the metrics classifier (10 epochs, with its "not a digit" class) and the
retrained-without-class-3 gold DDPM, then runs a study and prints its table (Markdown) and writes WORK/STUDY.json.
Every model is evaluated as the bench does: 100 samples per class, 25 DDIM steps, x0 clipped, sampling seed 3407.

- guidance: the original, the retrained model, safemax (published default: λ = 1, target ε_T, no guidance
  correction) and safemax-cutoff trained for w = 2 (guidance: 2), each evaluated at w = 1, 2, 3, 4, 5. The sweep
  samples the cutoff model at w it was not trained for on purpose: that is what the tie (`guidance: eval`)
  prevents in a run.
- leakage: the same four models at the bench's w = 2 with the leakage probes (pipeline/metrics/diffusion.py
  `leakage`): the share of null-label samples, and of SDEdit generations from real 3s noised to T/2 (conditioned
  on 3 / unconditional), that the metrics classifier calls a 3.
- decay: safemax as published (target ε_T, no guidance correction) with decay λ in --decays (0, 1, 50, 100), on
  the one original, for every unlearning seed in --unlearn-seeds, evaluated at w = 2 (the bench's): forgotten-class
  accuracy, unlearning accuracy (1 − it: how much of the class is forgotten, as the paper's table reports it),
  retain accuracy and FID proxy.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import torch

CPU = torch.device("cpu")
FORGET, CLASSES = 3, 10
SPEC = {"num_classes": 10, "channels": 1, "image_size": 16, "widths": [16, 32, 32], "timesteps": 1000,
        "schedule": "linear"}
TRAIN = {"epochs": 40, "lr": 0.002, "batch_size": 64}  # configs/diffusion-digits.yaml `train`
CLASSIFIER = {"epochs": 10}
PLAN = {"per_class": 100, "steps": 25, "seed": 3407, "clip": True}
PAPER_UA = {0.0: 100.0, 1.0: 100.0, 50.0: 98.8, 100.0: 83.8}  # the paper's λ ablation (%), issue 33


class Setting:
    """The digits data, the trained models and the evaluation of one study seed."""

    def __init__(self, work: pathlib.Path, seed: int):
        from pipeline.data.converters import prepare
        from pipeline.metrics.diffusion import real_retained_pixels
        from pipeline.models.diffusion_data import load_diffusion_sources

        self.work, self.seed, self.per_class = work, seed, PLAN["per_class"]
        data = work / "digits"
        if not (data / "_meta.json").exists():
            prepare("digits", str(data), seed=0)
        self.sources = load_diffusion_sources(str(data), FORGET, seed, 16)
        self.reference = real_retained_pixels({"unseen": self.sources["unseen"], "test": self.sources["test"]},
                                              [FORGET])
        order = torch.from_numpy(self.sources["forget"].sample_ids.argsort(kind="stable"))
        self.forget_images = self.sources["forget"].images[order]
        (work / "models").mkdir(parents=True, exist_ok=True)
        self.original_uri = self._ddpm("original", "train")
        self.retrain_uri = self._ddpm("retrain", "retain")
        self.classifier = self._classifier()

    def _ddpm(self, label: str, train_set: str) -> str:
        from pipeline.methods.diffusion_training import train_ddpm
        from pipeline.models.diffusion import DiffusionSpec, save_diffusion_checkpoint

        uri = self.work / "models" / f"{label}-s{self.seed}.pt"
        if not uri.exists():
            started = time.perf_counter()
            spec = DiffusionSpec(**SPEC)
            model, _ = train_ddpm(spec, self.sources[train_set], CPU, seed=self.seed, settings=TRAIN)
            save_diffusion_checkpoint(model, spec, str(uri))
            print(f"trained {label} DDPM in {time.perf_counter() - started:.0f} s -> {uri}", flush=True)
        return str(uri)

    def _classifier(self):
        from pipeline.methods.diffusion_training import train_classifier
        from pipeline.models import load_checkpoint, save_checkpoint
        from pipeline.models.diffusion_classifier import classifier_spec

        uri = self.work / "models" / f"classifier-s{self.seed}.pt"
        if not uri.exists():
            spec = classifier_spec(CLASSES, 1, 16)
            model, _ = train_classifier(spec, self.sources["train"], CPU, seed=self.seed, settings=CLASSIFIER)
            save_checkpoint(model, spec, str(uri))
        return load_checkpoint(str(uri))[0].eval()

    def model(self, label: str):
        from pipeline.models.diffusion import load_diffusion_checkpoint

        uri = {"original": self.original_uri, "retrain": self.retrain_uri}.get(label)
        return load_diffusion_checkpoint(uri or str(self.work / "models" / f"{label}-s{self.seed}.pt"))[0]

    def unlearned(self, label: str, method: str, settings: dict, seed: int | None = None):
        """`method` with `settings` on the original (cached under WORK/models/LABEL-sSEED.pt)."""
        from pipeline.methods.base import UnlearnData
        from pipeline.methods.diffusion_base import unlearn_ddpm
        from pipeline.models.diffusion import DiffusionSpec, load_diffusion_checkpoint, save_diffusion_checkpoint

        uri = self.work / "models" / f"{label}-s{self.seed}.pt"
        if uri.exists():
            return load_diffusion_checkpoint(str(uri))[0]
        model, original = self.model("original"), self.model("original")
        data = UnlearnData(forget=self.sources["forget"], retain=self.sources["retain"], num_classes=CLASSES,
                           forget_classes=(FORGET,))
        started = time.perf_counter()
        unlearn_ddpm(method, settings, model, original, data, CPU, seed=self.seed if seed is None else seed, log=None)
        print(f"unlearned {label} ({method} {settings}) in {time.perf_counter() - started:.0f} s", flush=True)
        save_diffusion_checkpoint(model, DiffusionSpec(**SPEC), str(uri))
        return model

    def evaluate(self, model, guidance: float, leakage: bool = False) -> dict:
        from pipeline.metrics.diffusion import evaluate_ddpm
        from pipeline.models.diffusion_process import SamplingPlan

        plan = SamplingPlan(**{**PLAN, "per_class": self.per_class}, guidance=guidance)
        extra = {"forget_images": self.forget_images} if leakage else {}
        metrics = evaluate_ddpm(model, self.classifier, self.reference, [FORGET], CLASSES, plan, CPU, **extra)
        return {"forget": metrics["acc_forget_gen"], "retain": metrics["acc_retain_gen"],
                "fid_proxy": metrics["fid_proxy"], **({"leakage": metrics["leakage"]} if leakage else {})}


GUIDANCE_MODELS = {"original": None, "retrain": None,
                   "safemax": ("safemax", {}),
                   "safemax-cutoff (w=2)": ("safemax-cutoff", {"guidance": 2.0})}


def guidance_study(setting: Setting, scales: list[float], models: list[str]) -> dict:
    rows = {}
    for label, made in GUIDANCE_MODELS.items():
        if label.split(" ")[0] not in models:
            continue
        model = setting.model(label) if made is None else setting.unlearned(label.split(" ")[0], *made)
        rows[label] = {str(w): setting.evaluate(model, w) for w in scales}
        print(label, json.dumps(rows[label]), flush=True)
    return rows


def guidance_table(results: dict, scales: list[float]) -> str:
    head = "| Model | " + " | ".join(f"w = {w:g}" for w in scales) + " |"
    lines = [head, "|---|" + "---|" * len(scales)]
    for label, by_w in results.items():
        cells = [f"{v['forget']:.2f} / {v['retain']:.3f} / {v['fid_proxy']:.1f}" for v in by_w.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n(each cell: forgotten-class accuracy / retain accuracy / FID proxy)"


def leakage_study(setting: Setting, guidance: float, models: list[str]) -> dict:
    rows = {}
    for label, made in GUIDANCE_MODELS.items():
        if label.split(" ")[0] not in models:
            continue
        model = setting.model(label) if made is None else setting.unlearned(label.split(" ")[0], *made)
        rows[label] = setting.evaluate(model, guidance, leakage=True)
        print(label, json.dumps(rows[label]), flush=True)
    return rows


def leakage_table(results: dict) -> str:
    lines = ["| Model | Forget-class acc | Null-label samples called 3 | SDEdit → 3 (conditioned on 3) | "
             "SDEdit → 3 (unconditional) |", "|---|---|---|---|---|"]
    for label, v in results.items():
        leak = v["leakage"]
        lines.append(f"| {label} | {v['forget']:.2f} | {leak['null_label']:.2f} | {leak['sdedit_conditional']:.2f} | "
                     f"{leak['sdedit_unconditional']:.2f} |")
    return "\n".join(lines)


def decay_study(setting: Setting, decays: list[float], seeds: list[int], guidance: float) -> dict:
    rows = {}
    for decay in decays:
        rows[f"{decay:g}"] = {}
        for seed in seeds:
            label = f"safemax-decay{decay:g}-u{seed}"
            model = setting.unlearned(label, "safemax", {"decay": decay}, seed=seed)
            rows[f"{decay:g}"][str(seed)] = setting.evaluate(model, guidance)
            print(label, json.dumps(rows[f"{decay:g}"][str(seed)]), flush=True)
    return rows


def decay_table(results: dict) -> str:
    import statistics

    def cell(values, digits):
        mean = statistics.mean(values)
        return f"{mean:.{digits}f}" + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")

    lines = ["| λ (decay) | Paper: unlearning acc. (%) | Ours: forgotten-class acc | Ours: unlearning acc. (%) = "
             "100·(1 − it) | Retain acc | FID proxy | Seeds |", "|---|---|---|---|---|---|---|"]
    for decay, by_seed in results.items():
        runs = list(by_seed.values())
        forget = [r["forget"] for r in runs]
        paper = PAPER_UA.get(float(decay))
        lines.append(f"| {decay} | {'—' if paper is None else f'{paper:.1f}'} | {cell(forget, 2)} | "
                     f"{cell([100 * (1 - f) for f in forget], 1)} | {cell([r['retain'] for r in runs], 3)} | "
                     f"{cell([r['fid_proxy'] for r in runs], 1)} | {len(runs)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=["guidance", "leakage", "decay"])
    parser.add_argument("--work", default="runs/study/diffusion", help="data, cached models, results")
    parser.add_argument("--seed", type=int, default=3407, help="the models' training and unlearning seed")
    parser.add_argument("--scales", default="1,2,3,4,5", help="guidance: the w to evaluate at")
    parser.add_argument("--guidance", type=float, default=2.0, help="leakage: the w to sample at (the bench's)")
    parser.add_argument("--per-class", type=int, default=PLAN["per_class"], help="samples per class (the bench's 100)")
    parser.add_argument("--models", default="original,retrain,safemax,safemax-cutoff",
                        help="guidance, leakage: which of original, retrain, safemax, safemax-cutoff")
    parser.add_argument("--decays", default="0,1,50,100", help="decay: the λ values")
    parser.add_argument("--unlearn-seeds", default="3407", help="decay: unlearning seeds (comma-separated)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = pathlib.Path(args.work)
    setting = Setting(work, args.seed)
    setting.per_class = args.per_class
    models = args.models.split(",")
    if args.study == "guidance":
        scales = [float(w) for w in args.scales.split(",")]
        results = guidance_study(setting, scales, models)
        table = guidance_table(results, scales)
    elif args.study == "leakage":
        results = leakage_study(setting, args.guidance, models)
        table = leakage_table(results)
    else:
        results = decay_study(setting, [float(d) for d in args.decays.split(",")],
                              [int(u) for u in args.unlearn_seeds.split(",")], args.guidance)
        table = decay_table(results)
    (work / f"{args.study}-s{args.seed}-{args.per_class}.json").write_text(json.dumps(results, indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
