"""LoTUS side by side: this project's method against the reference implementation's loop, same run.

    python -m benchmarks.lotus_reference [--work DIR] [--seeds 3407,13,12] [--rounds 3] [--threads 1]
        [--model cnn|cnn-nobn] [--before] [--set lotus.KEY=VALUE ...] [--split] [--json OUT]

The reference side is the public LoTUS code's loop (github cspartalis/LoTUS, src/unlearning_methods/lotus_class.py)
written again here from the paper and that code's behaviour, plain PyTorch, no Ray:
  - acc_u = Acc(teacher, D_u) rounded to 2 decimals, once (its `compute_accuracy` rounds);
  - every epoch, in eval mode, acc_f = Acc(student, D_f) rounded to 2 decimals; stop if acc_f - acc_u <= -0.01;
    tau = exp(alpha * (acc_f - acc_u));
  - a shuffled DataLoader over D_f + the retain subset (flag l per sample), batch 128, last batch as it falls;
    per batch the teacher's logits (no cache), targets l * gumbel_softmax(z, tau) + (1 - l) * gumbel_softmax(z,
    1, hard=True), loss mean(-sum t log_softmax(student)), AdamW (lr 1e-4, weight decay 5e-4);
  - no BatchNorm refresh (the running statistics are whatever training left).
Its DataLoader runs in the main process (`--reference-workers 0`): the public code's 4 loader processes, respawned
every epoch, would only make the reference slower on 2 cores, so the comparison uses the faster form.

Both sides get the same model (this project's CNN, the original trained here), the same images (digits-hard,
random:0.1 with the seed), the same retain subset (the project's `retain_subset_mask`), alpha (8 for 10 classes) and
seed (torch.manual_seed(seed) before each call). Per seed, the gold model (`retrain` on D_r) is trained once in
process and cached under --work, then `--rounds` rounds alternate (project, reference) and (reference, project),
timing each whole call (copying nothing: both sides start from their own copy of the original, made outside
the clock). It prints per-call seconds, the ratio project / reference (goal <= 0.5), and each side's Avg Gap and
RF-JSD (x 1e4) from pipeline.metrics, the gold model's metrics as the target.

`--model cnn` is the bench's model. On it the reference loop, which has no BatchNorm refresh, early-stops after 2-3
epochs with a collapsed model, so its call is short; the per-epoch ratio is printed beside the per-call one.
`--model cnn-nobn` is the same CNN without BatchNorm (the public code's CNN has none): both loops run all epochs.
`--before` adds a third side, the project's LoTUS with the settings it had before issue 35 (`BEFORE`).
Results: docs/performance.md, "LoTUS against its reference".

`--split` instead times the project's LoTUS phase by phase (prepare = acc_u, per-epoch acc_f, teacher passes,
training steps, BatchNorm refresh, the finiteness check, the rest of the loop) and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

FORGET = "random:0.1"
ORIGINAL_SEED = 3407  # configs/digits.yaml: original.seed
CPU = torch.device("cpu")
GOAL = 0.5
# The project's LoTUS as it was before issue 35's speed work: NCHW tensors, the BatchNorm refresh as an extra pass.
BEFORE = {"channels_last": False, "batchnorm_refresh_from": "pass"}


# ---- data and models (made once under --work) -------------------------------------------------------------------

def model_spec(meta):
    from pipeline.models import ModelSpec

    return ModelSpec(name="cnn", num_classes=meta.num_classes, channels=meta.channels, image_size=meta.height,
                     mean=meta.mean or [0.5], std=meta.std or [0.25])


def prepare_data(work: str) -> str:
    from pipeline.data.converters import prepare

    uri = os.path.join(work, "digits-hard")
    if not os.path.exists(os.path.join(uri, "_meta.json")):
        prepare("digits-hard", uri, seed=0)
    return uri


def build(spec, model: str):
    """The project's `cnn`, or (`cnn-nobn`) the same 4 conv blocks without BatchNorm (biased convolutions instead),
    as the public code's own small CNN has none."""
    from torch import nn

    from pipeline.models import build_model

    built = build_model(spec)
    if model == "cnn-nobn":
        features = built.backbone.features
        for index, layer in enumerate(features):
            if isinstance(layer, nn.Conv2d):
                features[index] = nn.Conv2d(layer.in_channels, layer.out_channels, 3, padding=1, bias=True)
            elif isinstance(layer, nn.BatchNorm2d):
                features[index] = nn.Identity()
    return built


def trained(path: str, spec, model_name: str, train_source, seed: int):
    """`retrain` (the original recipe: Adam 1e-3, 15 epochs, batch 64) with `seed` on `train_source`, cached."""
    from pipeline.methods import create_method
    from pipeline.methods.base import UnlearnData

    model = build(spec, model_name)
    if not os.path.exists(path):
        torch.manual_seed(seed)
        create_method("retrain", seed=seed, log=None).unlearn(
            model, None, UnlearnData(forget=train_source, retain=train_source), CPU)
        torch.save(model.state_dict(), path)
    model.load_state_dict(torch.load(path))
    return model.eval()


# ---- the reference loop -----------------------------------------------------------------------------------------

@torch.no_grad()
def reference_accuracy(model, loader) -> float:
    """The reference's compute_accuracy: eval mode, argmax, rounded to 2 decimals."""
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += int((model(images).argmax(dim=1) == labels).sum())
        total += len(labels)
    return round(correct / total, 2)


def reference_lotus(model, teacher, forget, retain, unseen, alpha: float, seed: int, epochs: int = 10,
                    lr: float = 1e-4, weight_decay: float = 5e-4, batch_size: int = 128, workers: int = 0) -> int:
    """The reference's LoTUS on `model` in place (see the module docstring); returns the epochs run."""
    from torch.utils.data import DataLoader, TensorDataset

    flags = torch.cat([torch.ones(len(forget)), torch.zeros(len(retain))])
    mixed = TensorDataset(torch.cat([forget.images, retain.images]), flags)
    loader = DataLoader(mixed, batch_size=batch_size, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(seed))
    forget_loader = DataLoader(TensorDataset(forget.images, forget.labels), batch_size=batch_size)
    unseen_loader = DataLoader(TensorDataset(unseen.images, unseen.labels), batch_size=batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    teacher.eval()
    acc_u = reference_accuracy(teacher, unseen_loader)
    epochs_run = 0
    for _ in range(epochs):
        delta = reference_accuracy(model, forget_loader) - acc_u
        if delta <= -0.01:
            break
        tau = math.exp(alpha * delta)
        model.train()
        for images, is_forget in loader:
            with torch.no_grad():
                teacher_logits = teacher(images)
            outputs = model(images)
            optimizer.zero_grad()
            is_forget = is_forget.unsqueeze(1)
            hard = F.gumbel_softmax(teacher_logits, tau=1.0, hard=True, dim=-1)
            soft = F.gumbel_softmax(teacher_logits, tau=tau, hard=False, dim=-1)
            targets = is_forget * soft + (1 - is_forget) * hard
            loss = -(targets * F.log_softmax(outputs, dim=1)).sum(dim=1).mean()
            loss.backward()
            optimizer.step()
        epochs_run += 1
    model.eval()
    return epochs_run


# ---- one call of each side ----------------------------------------------------------------------------------------

def project_call(model, original, sources, seed: int, config: dict) -> int:
    from pipeline.methods import create_method
    from pipeline.methods.harness import unlearn_data

    torch.manual_seed(seed)
    method = create_method("lotus", config, seed=seed, log=None)
    report = method.unlearn(model, original, unlearn_data(sources, method, seed), CPU)
    return report.epochs_run


def reference_call(model, original, sources, seed: int, config: dict, workers: int) -> int:
    from pipeline.methods import create_method
    from pipeline.methods.harness import retain_subset_mask
    from pipeline.methods.lotus import resolve_alpha

    defaults = create_method("lotus", config, seed=seed, log=None).config
    retain = sources["retain"]
    retain = retain.subset(retain_subset_mask(retain.sample_ids, float(defaults["retain_fraction"]), seed))
    alpha = resolve_alpha(defaults["alpha"], 10, False, defaults["class_alpha"])
    torch.manual_seed(seed)
    return reference_lotus(model, copy.deepcopy(original), sources["forget"], retain, sources["unseen"], alpha, seed,
                           epochs=int(defaults["epochs"]), lr=float(defaults["lr"]),
                           weight_decay=float(defaults["weight_decay"]), batch_size=int(defaults["batch_size"]),
                           workers=workers)


def quality(model, original, gold, sources, seed: int) -> dict:
    from pipeline.metrics import evaluate, summarize

    splits = {name: sources[name] for name in ("forget", "retain", "test", "unseen")}
    summary = summarize(evaluate({"unlearned": model, "original": original, "gold": gold}, splits, CPU, 10), seed)
    return {"avg_gap": summary["avg_gap"], "rf_jsd_e4": summary["rf_jsd_e4"], "acc_forget": summary["acc_forget"],
            "acc_test": summary["acc_test"], "mia": summary["mia"]}


# ---- the phase split of the project's LoTUS -------------------------------------------------------------------

class PhaseClock:
    """Wraps the method's hooks and the teacher cache to add up each phase's seconds (per epoch too)."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.per_epoch = defaultdict(lambda: defaultdict(float))
        self.epoch = -1

    def wrap(self, owner, name: str, phase: str, epoch_of=None):
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                self.seconds[phase] += spent
                self.per_epoch[self.epoch][phase] += spent

        setattr(owner, name, timed)
        return inner


def project_split(model, original, sources, seed: int, config: dict) -> tuple[float, PhaseClock]:
    from pipeline.methods import create_method
    from pipeline.methods import teacher as teacher_module
    from pipeline.methods.harness import unlearn_data

    clock = PhaseClock()
    torch.manual_seed(seed)
    method = create_method("lotus", config, seed=seed, log=None)
    original_begin = method.begin_epoch

    def begin_epoch(epoch, *args):
        clock.epoch = epoch
        return original_begin(epoch, *args)

    method.begin_epoch = begin_epoch
    clock.wrap(method, "prepare", "prepare (acc_u)")
    clock.wrap(method, "begin_epoch", "begin_epoch (acc_f)")
    clock.wrap(method, "_run_epoch", "epoch loop (all)")
    clock.wrap(method, "step", "steps (incl. teacher)")
    clock.wrap(method, "end_epoch", "end_epoch (BN refresh)")
    clock.wrap(method, "check_finite", "check_finite")
    frozen_call = teacher_module.FrozenOutputs.__call__

    def teacher_call(self, *args):
        started = time.perf_counter()
        try:
            return frozen_call(self, *args)
        finally:
            spent = time.perf_counter() - started
            clock.seconds["teacher outputs"] += spent
            clock.per_epoch[clock.epoch]["teacher outputs"] += spent

    teacher_module.FrozenOutputs.__call__ = teacher_call
    try:
        started = time.perf_counter()
        data = unlearn_data(sources, method, seed)
        clock.seconds["unlearn_data (subset)"] += time.perf_counter() - started
        report = method.unlearn(model, original, data, CPU)
        total = time.perf_counter() - started
    finally:
        teacher_module.FrozenOutputs.__call__ = frozen_call
    clock.seconds["unlearn_seconds (method's clock)"] = report.unlearn_seconds
    clock.seconds["epochs run"] = report.epochs_run
    return total, clock


def print_split(totals: list[float], clocks: list[PhaseClock]) -> None:
    names = ["unlearn_data (subset)", "prepare (acc_u)", "begin_epoch (acc_f)", "epoch loop (all)",
             "steps (incl. teacher)", "teacher outputs", "end_epoch (BN refresh)", "check_finite",
             "unlearn_seconds (method's clock)", "epochs run"]
    mean = statistics.mean(totals)
    print(f"\nproject LoTUS, phase split (mean of {len(totals)} calls; whole call {mean:.3f} s)")
    print("| phase | s per call | share |")
    print("|---|---:|---:|")
    for name in names:
        value = statistics.mean(c.seconds.get(name, 0.0) for c in clocks)
        share = "" if name == "epochs run" else f"{value / mean:.0%}"
        print(f"| {name} | {value:.3f} | {share} |")
    loop = statistics.mean(c.seconds["epoch loop (all)"] - c.seconds["steps (incl. teacher)"] for c in clocks)
    print(f"| batching inside the epoch loop (loop - steps) | {loop:.3f} | {loop / mean:.0%} |")
    print("\nper epoch (first call): " + "; ".join(
        f"e{epoch}: " + ", ".join(f"{k.split(' ')[0]} {v * 1000:.0f} ms" for k, v in phases.items())
        for epoch, phases in sorted(clocks[0].per_epoch.items()) if epoch >= 0))


# ---- main -----------------------------------------------------------------------------------------------------

def parse_sets(pairs) -> dict:
    config = {}
    for pair in pairs or ():
        key, value = pair.split("=", 1)
        if not key.startswith("lotus."):
            raise SystemExit(f"--set {pair}: only lotus.KEY=VALUE")
        config[key[len("lotus."):]] = json.loads(value) if value[:1] in "0123456789-[{tfn" else value
    return config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/lotus-reference")
    parser.add_argument("--seeds", default="3407,13,12")
    parser.add_argument("--model", choices=("cnn", "cnn-nobn"), default="cnn",
                        help="cnn: the bench's model; cnn-nobn: the same without BatchNorm (as the public code's CNN)")
    parser.add_argument("--rounds", type=int, default=3, help="timed calls of each side per seed, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both sides)")
    parser.add_argument("--reference-workers", type=int, default=0, help="the reference DataLoader's processes")
    parser.add_argument("--set", action="append", help="lotus.KEY=VALUE for the project's side")
    parser.add_argument("--split", action="store_true", help="time the project's phases instead")
    parser.add_argument("--before", action="store_true",
                        help="a third side: the project's LoTUS with the settings it had before issue 35 (BEFORE)")
    parser.add_argument("--json", help="append one JSON line with every figure")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from pipeline.data.local import load_sources
    from pipeline.data.shards import read_meta
    from pipeline.methods.base import pay_one_time_import_costs

    os.makedirs(args.work, exist_ok=True)
    data = prepare_data(args.work)
    meta = read_meta(data)
    spec = model_spec(meta)
    config = parse_sets(args.set)
    seeds = [int(s) for s in args.seeds.split(",")]
    everything, _ = load_sources(data)
    original = trained(os.path.join(args.work, f"{args.model}-original-{ORIGINAL_SEED}.pt"), spec, args.model,
                       everything["train"], ORIGINAL_SEED)
    pay_one_time_import_costs()
    rows = []
    if args.split:
        totals, clocks = [], []
        for seed in seeds:
            sources, _ = load_sources(data, spec=FORGET, seed=seed)
            for _ in range(args.rounds):
                total, clock = project_split(copy.deepcopy(original), original, sources, seed,
                                             {**config, **(BEFORE if args.before else {})})
                totals.append(total)
                clocks.append(clock)
        print_split(totals, clocks)
        return 0
    for seed in seeds:
        sources, _ = load_sources(data, spec=FORGET, seed=seed)
        gold = trained(os.path.join(args.work, f"{args.model}-gold-{seed}.pt"), spec, args.model, sources["retain"],
                       seed)
        sides = ["project", "reference"] + (["before"] if args.before else [])
        times = {side: [] for side in sides}
        figures = {}
        for round_ in range(args.rounds):
            order = sides[round_ % len(sides):] + sides[:round_ % len(sides)]  # each side first in turn
            for side in order:
                model = copy.deepcopy(original)
                started = time.perf_counter()
                if side == "project":
                    epochs = project_call(model, original, sources, seed, config)
                elif side == "before":
                    epochs = project_call(model, original, sources, seed, {**config, **BEFORE})
                else:
                    epochs = reference_call(model, original, sources, seed, config, args.reference_workers)
                times[side].append(time.perf_counter() - started)
                if round_ == 0:  # each round gives the same model (same seed): measure it once
                    figures[side] = {**quality(model, original, gold, sources, seed), "epochs": epochs}
        row = {"seed": seed, "config": config, "threads": args.threads, "model": args.model,
               **{f"{side}_s": times[side] for side in sides},
               "ratio": statistics.median(times["project"]) / statistics.median(times["reference"]),
               "ratio_per_epoch": (statistics.median(times["project"]) / figures["project"]["epochs"])
               / (statistics.median(times["reference"]) / figures["reference"]["epochs"]),
               **{side: figures[side] for side in sides}}
        rows.append(row)
        print(f"seed {seed}: " + " | ".join(f"{side} {' '.join(f'{t:.3f}' for t in times[side])} s" for side in sides)
              + f" | project / reference (medians) {row['ratio']:.2f}, per epoch run {row['ratio_per_epoch']:.2f} | "
              + " | ".join(f"{side}: Avg Gap {f['avg_gap']:.4f} RF-JSD {f['rf_jsd_e4']:.2f} acc_f "
                           f"{f['acc_forget']:.3f} test {f['acc_test']:.3f} MIA {f['mia']:.3f} epochs {f['epochs']}"
                           for side, f in figures.items()), flush=True)
    sides = ["project", "reference"] + (["before"] if args.before else [])
    seconds = {side: statistics.mean(statistics.median(r[f"{side}_s"]) for r in rows) for side in sides}
    mean = {side: {key: statistics.mean(r[side][key] for r in rows) for key in ("avg_gap", "rf_jsd_e4", "epochs")}
            for side in sides}
    ratio = seconds["project"] / seconds["reference"]
    print(f"\n{args.model}, seeds {args.seeds}, {args.rounds} rounds, {args.threads} torch thread(s); s/call = median "
          f"of the rounds; Avg Gap and RF-JSD (x1e4) of each seed's model")
    print("| seed | " + " | ".join(f"{side} s/call" for side in sides) + " | project / reference | per epoch run | "
          + " | ".join(f"{side} Avg Gap / RF-JSD / epochs" for side in sides) + " |")
    print("|---|" + "---:|" * (len(sides) + 2) + "---|" * len(sides))
    for r in rows:
        print(f"| {r['seed']} | " + " | ".join(f"{statistics.median(r[f'{side}_s']):.3f}" for side in sides)
              + f" | {r['ratio']:.2f} | {r['ratio_per_epoch']:.2f} | "
              + " | ".join(f"{r[side]['avg_gap']:.4f} / {r[side]['rf_jsd_e4']:.1f} / {r[side]['epochs']}"
                           for side in sides) + " |")
    per_epoch = statistics.mean(r["ratio_per_epoch"] for r in rows)
    print(f"| mean | " + " | ".join(f"{seconds[side]:.3f}" for side in sides)
          + f" | {ratio:.2f} ({'PASS' if ratio <= GOAL else 'MISS'}: goal <= {GOAL}) | {per_epoch:.2f} | "
          + " | ".join(f"{mean[side]['avg_gap']:.4f} / {mean[side]['rf_jsd_e4']:.1f} / {mean[side]['epochs']:.1f}"
                       for side in sides) + " |")
    if args.before:
        print(f"project / before: {seconds['project'] / seconds['before']:.2f}")
    if args.json:
        with open(args.json, "a") as handle:
            handle.write(json.dumps({"rows": rows, "ratio": ratio, "ratio_per_epoch": per_epoch, "seconds": seconds,
                                     "mean": mean}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
