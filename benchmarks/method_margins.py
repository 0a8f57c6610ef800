"""What each method does at its defaults on several originals: the figures behind tests/methods' margins.

    python -m benchmarks.method_margins [--originals 0,1,2] [--specs random:0.1,random:0.3,class:3]
        [--methods lotus,scrub] [--set lotus.lr=3e-4] [--label NAME] [--out results.jsonl]

digits-hard is prepared under --data (once). An original is trained per initial seed exactly as the tests'
fixture trains its own (tests/conftest.py: `retrain` with that seed on all of train; seed 0 is the tests'
original) and cached under --cache. Every (original, forget spec, method) is run in process at the method's
defaults (plus --set), forget seed 3407 as in the tests, and one JSON line is appended to --out with the
original's and the unlearned model's accuracy on D_f, D_r, D_test (for `class:N`, the other classes' test
images, as in the tests) and D_u, the mean true-class confidence on D_f and D_u, and the epochs run.
Runs single-threaded (torch.set_num_threads(1)). `--summary FILE` prints per-(method, spec) ranges instead.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections import defaultdict

import torch

FORGET_SEED = 3407
ALL_METHODS = ("finetune", "neggrad", "randlabel", "badteacher", "scrub", "ssd", "unsir", "salun", "jit", "npo",
               "lotus", "retrain")


def model_spec():
    from pipeline.models import ModelSpec

    return ModelSpec(name="cnn", num_classes=10, channels=1, image_size=32, mean=[0.2], std=[0.25])


def load(data: str, spec: str):
    from pipeline.data.local import load_sources

    sources, _ = load_sources(data, spec=spec, seed=FORGET_SEED)
    if spec.startswith("class:"):
        forgotten = int(spec.split(":")[1])
        test = sources["test"]
        sources = {**sources, "test": test.subset(test.labels != forgotten)}
        return sources, (forgotten,)
    return sources, ()


def original(data: str, cache: str, seed: int):
    """The original of initial seed `seed`, trained as tests/conftest.py's fixture trains seed 0."""
    from pipeline.methods import create_method
    from pipeline.methods.base import UnlearnData
    from pipeline.models import build_model, load_checkpoint, save_checkpoint

    path = os.path.join(cache, f"original-{seed}.pt")
    if not os.path.exists(path):
        sources, _ = load(data, "random:0.1")
        torch.manual_seed(seed)
        model = build_model(model_spec())
        create_method("retrain", seed=seed, log=None).unlearn(
            model, None, UnlearnData(forget=sources["forget"], retain=sources["train"]), torch.device("cpu"))
        save_checkpoint(model, model_spec(), path)
    return load_checkpoint(path)[0]


@torch.no_grad()
def confidence(model, source) -> float:
    """Mean p(y|x) of the true label."""
    model.eval()
    return torch.cat([torch.softmax(model(b["image"]), 1).gather(1, b["label"][:, None]).squeeze(1)
                      for b in source.batches(256)]).mean().item()


def measure(model, sources) -> dict:
    from pipeline.methods.accuracy import accuracy

    cpu = torch.device("cpu")
    return {"forget": accuracy(model, sources["forget"], cpu), "retain": accuracy(model, sources["retain"], cpu),
            "test": accuracy(model, sources["test"], cpu), "unseen": accuracy(model, sources["unseen"], cpu),
            "conf_forget": confidence(model, sources["forget"]), "conf_unseen": confidence(model, sources["unseen"])}


def run(name: str, model, sources, forget_classes, config: dict) -> tuple[dict, int, float]:
    from pipeline.methods import create_method
    from pipeline.methods.harness import unlearn_data

    teacher = copy.deepcopy(model)
    torch.manual_seed(FORGET_SEED)
    method = create_method(name, config, seed=FORGET_SEED, log=None)
    data = unlearn_data(sources, method, FORGET_SEED, forget_classes=forget_classes)
    started = time.perf_counter()
    report = method.unlearn(model, teacher, data, torch.device("cpu"))
    return measure(model, sources), report.epochs_run, time.perf_counter() - started


def parse_sets(pairs):
    settings = defaultdict(dict)
    for pair in pairs or ():
        key, value = pair.split("=", 1)
        method, setting = key.split(".", 1)
        settings[method][setting] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    return settings


def summary(path: str) -> None:
    rows = [json.loads(line) for line in open(path)]
    groups = defaultdict(list)
    for row in rows:
        groups[(row["label"], row["method"], row["spec"])].append(row)
    print("| label | method | spec | originals | Acc_f before→after | flipped of |D_f| | conf_f after "
          "| Δ Acc_r | Δ Acc_test | epochs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (label, method, spec), members in sorted(groups.items()):
        size = members[0]["forget_size"]
        flipped = [round((r["before"]["forget"] - r["after"]["forget"]) * size) for r in members]

        def span(values, digits=2):
            return f"{min(values):+.{digits}f}..{max(values):+.{digits}f}" if len(values) > 1 else f"{values[0]:+.{digits}f}"

        print(f"| {label} | {method} | {spec} | {','.join(str(r['original']) for r in members)} | "
              f"{min(r['before']['forget'] for r in members):.2f}→{min(r['after']['forget'] for r in members):.2f}.."
              f"{max(r['after']['forget'] for r in members):.2f} | {min(flipped)}..{max(flipped)} of {size} | "
              f"{min(r['after']['conf_forget'] for r in members):.2f}..{max(r['after']['conf_forget'] for r in members):.2f} | "
              f"{span([r['after']['retain'] - r['before']['retain'] for r in members])} | "
              f"{span([r['after']['test'] - r['before']['test'] for r in members])} | "
              f"{sorted({r['epochs_run'] for r in members})} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/method-margins/digits-hard")
    parser.add_argument("--cache", default="/tmp/method-margins/originals")
    parser.add_argument("--originals", default="0,1,2")
    parser.add_argument("--specs", default="random:0.1,random:0.3,class:3")
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--set", action="append", help="METHOD.KEY=VALUE, as `unlearn run --set`")
    parser.add_argument("--label", default="defaults")
    parser.add_argument("--out", default="/tmp/method-margins/results.jsonl")
    parser.add_argument("--summary", help="print the ranges of a results file and exit")
    args = parser.parse_args(argv)
    if args.summary:
        summary(args.summary)
        return 0
    torch.set_num_threads(1)
    from pipeline.data.converters import prepare

    os.makedirs(args.cache, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if not os.path.exists(os.path.join(args.data, "_meta.json")):
        prepare("digits-hard", args.data, seed=0)
    settings = parse_sets(args.set)
    for seed in [int(s) for s in args.originals.split(",")]:
        trained = original(args.data, args.cache, seed)
        for spec in args.specs.split(","):
            sources, forget_classes = load(args.data, spec)
            before = measure(trained, sources)
            for name in args.methods.split(","):
                model = copy.deepcopy(trained)
                after, epochs, seconds = run(name, model, sources, forget_classes, settings.get(name, {}))
                row = {"label": args.label, "original": seed, "spec": spec, "method": name,
                       "config": settings.get(name, {}), "forget_size": len(sources["forget"]),
                       "before": before, "after": after, "epochs_run": epochs, "seconds": round(seconds, 2)}
                with open(args.out, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(f"[{args.label}] original {seed} {spec} {name}: forget {before['forget']:.3f}->"
                      f"{after['forget']:.3f} conf_f {after['conf_forget']:.3f} retain {before['retain']:.3f}->"
                      f"{after['retain']:.3f} test {before['test']:.3f}->{after['test']:.3f} "
                      f"epochs {epochs} {seconds:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
