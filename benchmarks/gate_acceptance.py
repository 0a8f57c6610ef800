"""How often the deletion-request gate (pipeline/deletion/gate.py) accepts, rejects or cannot verify a request, for
models whose truth is known: retrained from scratch without the ids (must be accepted), unchanged (must not be),
and the methods at their deletion-request settings.

    python -m benchmarks.gate_acceptance --work /tmp/gate-bench --estimate          # the cost, nothing run
    python -m benchmarks.gate_acceptance --work /tmp/gate-bench --requests 2        # end to end, small
    python -m benchmarks.gate_acceptance --work /tmp/gate-bench --requests 20       # the table (goes on from 2)
    python -m benchmarks.gate_acceptance --work /tmp/gate-bench --table-only --alpha 0.1   # re-judge, no training

Everything is kept under --work, so a rerun goes on where the last one stopped and `--table-only` judges the
stored scores again with other gate settings:
1. digits-hard (seed 0); the original trained on all of train with the `retrain` recipe (seed 0), one Ray task;
2. a U-LiRA shadow bank of --shadows shadows (pipeline/runs/shadows.py), trained as parallel Ray tasks;
3. the original and every shadow scored once on train ∪ val ∪ test (the unchanged model's figures);
4. per request (--requests per size, random training ids seeded by size and number): one Ray task per model
   retrains from scratch without the ids or unlearns them with the method at `unlearn forget`'s settings
   (jobs/forget.REQUEST_SETTINGS; the same method code, in process), seed 3407 + request number, and stores its
   per-sample figures on the request and its never-seen reference (pipeline/deletion/evidence.choose_reference)
   and its retain and test accuracy;
5. the gate judges every (request, model) without the bank and with its first K shadows for each --bank-sizes K:
   WORK/judgements.jsonl, and the table in WORK/table.md.
Ray runs --cpus tasks at once (one torch thread each). The cost printed first comes from timing one epoch here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

FORGET_SEED = 3407  # `unlearn forget`'s default --seed
TRAINED = ("retrain", "lotus", "finetune", "randlabel")
UNCHANGED = "original"
TEACHER_COST = 1.33  # a frozen teacher's forward pass next to the student's forward and backward


def model_spec():
    from pipeline.models import ModelSpec

    return ModelSpec(name="cnn", num_classes=10, channels=1, image_size=32, mean=[0.2], std=[0.25])


# ---- set-up: data, original, bank, their scores ----------------------------------------------------------------

@dataclass(frozen=True)
class Setup:
    access: object  # DataAccess
    index: object  # pyarrow Table: sample_id, label, split
    recipe: dict
    original: str
    bank: object  # ShadowBank


def set_up(work: str, shadows: int) -> Setup:
    """The data, the original (trained if missing) and a bank with `shadows` shadows (the missing ones trained)."""
    from pipeline.data.converters import prepare
    from pipeline.data.shards import read_index, read_meta
    from pipeline.runs.shadows import (DataAccess, Membership, TaskResources, TrainJob, bank_manifest, ensure_shadows,
                                       open_bank, run_tasks, train_model)
    from pipeline.runs.train import training_recipe

    data = os.path.join(work, "digits-hard")
    if not os.path.exists(os.path.join(data, "_meta.json")):
        prepare("digits-hard", data, seed=0)
    meta = read_meta(data)
    index = read_index(data, meta)
    access, recipe, spec = DataAccess(data, meta, 32), training_recipe({}), dataclasses.asdict(model_spec())
    original = os.path.join(work, "original.pt")
    if not os.path.exists(original[:-3] + ".json"):
        train_ids = frozenset(_ids(index, "train"))
        result = run_tasks({"original": (train_model, TrainJob(access, spec, recipe, 0, Membership(sample_ids=train_ids),
                                                               original))})["original"]
        if "failed" in result:
            raise RuntimeError(f"the original failed to train: {result['failed']}")
        print(f"original: {result['train_seconds']:.0f} s, accuracy {result['accuracy_held_out']:.3f} on val + test",
              flush=True)
    bank = open_bank(os.path.join(work, "bank"), bank_manifest(meta, recipe, spec, bank_seed=0))
    state = ensure_shadows(bank, shadows, access, TaskResources())
    if state["failed"]:
        raise RuntimeError(f"shadows failed: {state['failed']}")
    return Setup(access, index, recipe, original, bank)


def _ids(index, split: str | None = None) -> list[str]:
    ids, splits = index.column("sample_id").to_pylist(), index.column("split").to_pylist()
    return [i for i, s in zip(ids, splits) if split is None or s == split]


def pool_scores(setup: Setup, work: str, shadows: int) -> dict:
    """The original on every sample and each shadow on train ∪ val (cached in WORK/pool-K.npz)."""
    from pipeline.deletion.evidence import SampleJob, score_samples
    from pipeline.runs.shadows import POOL_SPLITS, ScoreJob, run_tasks, score_model

    path = os.path.join(work, f"pool-{shadows}.npz")
    if os.path.exists(path):
        return dict(np.load(path, allow_pickle=True))
    ids = tuple(_ids(setup.index))
    splits = np.asarray(setup.index.column("split").to_pylist(), dtype=object)
    pool = tuple(np.asarray(ids, dtype=object)[np.isin(splits, POOL_SPLITS)])
    jobs = {"original": (score_samples, SampleJob(setup.access, setup.original, ids))}
    jobs.update({i: (score_model, ScoreJob(setup.access, setup.bank.checkpoint(i), pool)) for i in range(shadows)})
    results = run_tasks(jobs)
    scored = {"ids": np.asarray(ids, dtype=object), "labels": setup.index.column("label").to_numpy(),
              "splits": splits, "pool": np.asarray(pool, dtype=object), "phi": results["original"]["phi"],
              "correct": results["original"]["correct"],
              "shadow_phi": np.stack([results[i]["phi"] for i in range(shadows)])}
    np.savez(path + ".tmp.npz", **scored)
    os.replace(path + ".tmp.npz", path)
    return scored


# ---- requests and their models ----------------------------------------------------------------------------------

def request_ids(index, size: int, number: int) -> tuple[str, ...]:
    train = sorted(_ids(index, "train"))
    rng = np.random.default_rng([size, number, 31])
    return tuple(sorted(rng.choice(train, size=size, replace=False).tolist()))


@dataclass(frozen=True)
class RequestJob:
    """Retrain without the request (model "retrain") or unlearn it from the original with a method."""

    data_uri: str
    model: str
    request: tuple
    reference: tuple
    original: str
    recipe: dict
    seed: int
    resources: object  # TaskResources

    @property
    def evidence_ids(self) -> tuple:
        return self.request + self.reference


def method_settings(model: str, recipe: dict) -> dict:
    from jobs.forget import REQUEST_SETTINGS

    return recipe if model == "retrain" else REQUEST_SETTINGS.get(model, {})


def run_request_model(job: RequestJob) -> dict:
    """Run in a Ray task: the model for this request; its figures on the request and reference, in that order, and
    its accuracy on D_r and D_test."""
    import torch

    from pipeline.data.local import load_sources
    from pipeline.data.shards import read_index, read_meta
    from pipeline.data.splits import build_splits
    from pipeline.deletion.evidence import sample_scores
    from pipeline.methods import create_method
    from pipeline.methods.base import UnlearnData
    from pipeline.methods.harness import unlearn_data
    from pipeline.models import build_model, load_checkpoint

    torch.set_num_threads(max(1, int(job.resources.cpus)))
    cpu = torch.device("cpu")
    meta = read_meta(job.data_uri)
    splits = build_splits(read_index(job.data_uri, meta), "request:bench", FORGET_SEED, job.request)
    sources, _ = load_sources(job.data_uri, splits=splits, meta=meta, verify=False)
    started = time.perf_counter()
    method = create_method(job.model, method_settings(job.model, job.recipe), seed=job.seed, log=None)
    if job.model == "retrain":
        model = build_model(model_spec())
        report = method.unlearn(model, None, UnlearnData(forget=sources["forget"], retain=sources["retain"]), cpu)
    else:
        model = load_checkpoint(job.original)[0]
        original = load_checkpoint(job.original)[0] if method.needs_original else None
        report = method.unlearn(model, original, unlearn_data(sources, method, job.seed), cpu)
    seconds = time.perf_counter() - started
    figures = {}
    for name in ("forget", "unseen", "retain", "test"):
        scores = sample_scores(model, sources[name], cpu)
        figures[name] = (sources[name].sample_ids, scores)
    position = {i: (name, row) for name in ("forget", "unseen") for row, i in enumerate(figures[name][0])}
    ordered = [position[i] for i in job.evidence_ids]
    return {"phi": np.array([figures[name][1].phi[row] for name, row in ordered]),
            "correct": np.array([figures[name][1].correct[row] for name, row in ordered]),
            "acc_retain": float(figures["retain"][1].correct.mean()), "acc_test": float(figures["test"][1].correct.mean()),
            "seconds": seconds, "epochs_run": report.epochs_run}


def score_path(work: str, size: int, number: int, model: str) -> str:
    return os.path.join(work, "scores", f"n{size:04d}-r{number:02d}-{model}.npz")


def request_jobs(setup: Setup, work: str, sizes, requests: int, models) -> dict:
    """The (size, number, model) tasks whose scores are not stored yet, request by request across the sizes (so a
    stopped run has covered every size evenly)."""
    from pipeline.deletion.evidence import choose_reference
    from pipeline.runs.shadows import TaskResources

    jobs = {}
    for number in range(requests):
        for size in sizes:
            ids = request_ids(setup.index, size, number)
            reference = choose_reference(setup.index, ids, FORGET_SEED)
            for model in models:
                if model != UNCHANGED and not os.path.exists(score_path(work, size, number, model)):
                    jobs[(size, number, model)] = (run_request_model, RequestJob(
                        setup.access.uri, model, ids, reference, setup.original, setup.recipe, FORGET_SEED + number,
                        TaskResources()))
    return jobs


def store(work: str, key, result: dict) -> None:
    size, number, model = key
    if "failed" in result:
        print(f"  n={size} request {number} {model}: FAILED {result['failed']}", flush=True)
        return
    path = score_path(work, size, number, model)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path + ".tmp.npz", **{k: np.asarray(v) for k, v in result.items()})
    os.replace(path + ".tmp.npz", path)
    print(f"  n={size} request {number} {model}: {result['seconds']:.0f} s, {result['epochs_run']} epochs, acc_test "
          f"{result['acc_test']:.3f}", flush=True)


# ---- the cost ---------------------------------------------------------------------------------------------------

def seconds_per_sample_epoch(data: str, recipe: dict) -> float:
    """One epoch of the recipe on 256 training samples, timed here on one thread."""
    import torch

    from pipeline.data.local import load_sources
    from pipeline.methods import create_method
    from pipeline.methods.base import UnlearnData
    from pipeline.models import build_model

    torch.set_num_threads(1)
    train = load_sources(data, verify=False)[0]["train"]
    train = train.subset(np.arange(len(train)) < 256)
    model = build_model(model_spec())
    started = time.perf_counter()
    create_method("retrain", {**recipe, "epochs": 1}, log=None).unlearn(model, None, UnlearnData(forget=train,
                                                                                                  retain=train),
                                                                     torch.device("cpu"))
    return (time.perf_counter() - started) / 256


def task_sample_epochs(model: str, size: int, train: int, recipe: dict) -> float:
    """Sample-epochs of forward and backward passes a request's model costs (an upper bound: early stops)."""
    from pipeline.methods import create_method

    method = create_method(model, method_settings(model, recipe), log=None)
    retain = (train - size) * (method.retain_fraction if model != "retrain" else 1.0)
    passes = retain + (size if model in ("lotus", "randlabel") else 0)
    return method.config["epochs"] * passes * (TEACHER_COST if method.needs_original else 1.0)


def estimate(index, work: str, data: str, recipe: dict, sizes, requests: int, models, shadows: int, cpus: int) -> float:
    """Print what is left to run and its estimated wall time; return the CPU-seconds."""
    per = seconds_per_sample_epoch(data, recipe)
    train = len(_ids(index, "train"))
    pool = train + len(_ids(index, "val"))
    lines, total = [], 0.0
    if not os.path.exists(os.path.join(work, "original.json")):
        total += recipe["epochs"] * train * per
        lines.append(f"original: {recipe['epochs'] * train * per / 60:.1f} CPU-min")
    bank_dir = os.path.join(work, "bank", "shadows")
    missing = [i for i in range(shadows) if not os.path.exists(os.path.join(bank_dir, f"shadow-{i:04d}.json"))]
    if missing:
        bank_cost = len(missing) * recipe["epochs"] * pool / 2 * per
        total += bank_cost
        lines.append(f"{len(missing)} shadows: {bank_cost / 60:.1f} CPU-min")
    for model in models:
        if model == UNCHANGED:
            continue
        left = [(size, n) for size in sizes for n in range(requests)
                if not os.path.exists(score_path(work, size, n, model))]
        cost = sum(task_sample_epochs(model, size, train, recipe) for size, _ in left) * per
        total += cost
        lines.append(f"{model}: {len(left)} requests, {cost / 60:.1f} CPU-min")
    print(f"estimate ({per * 1e3:.2f} ms per sample-epoch measured now on one thread): " + "; ".join(lines), flush=True)
    print(f"estimate: {total / 60:.0f} CPU-min, about {total / 60 / cpus:.0f} min on {cpus} parallel tasks "
          f"(more if the cores are shared)", flush=True)
    return total


# ---- judging ----------------------------------------------------------------------------------------------------

def judge_all(setup_index, pool: dict, work: str, sizes, requests: int, models, bank_sizes, thresholds,
              bank_seed: int) -> list[dict]:
    """Every stored (request, model), judged without a bank and with each bank size."""
    from pipeline.deletion.evidence import choose_reference
    from pipeline.deletion.gate import Evidence, SampleScores, gate_checks, verdict_of
    from pipeline.runs.shadows import in_shadow_half

    row_of = {sample_id: row for row, sample_id in enumerate(pool["ids"])}
    pool_row = {sample_id: row for row, sample_id in enumerate(pool["pool"])}
    train_rows = np.flatnonzero(pool["splits"] == "train")
    test_rows = np.flatnonzero(pool["splits"] == "test")
    judged = []
    for size in sizes:
        for number in range(requests):
            ids = request_ids(setup_index, size, number)
            evidence_ids = ids + choose_reference(setup_index, ids, FORGET_SEED)
            rows = np.array([row_of[i] for i in evidence_ids])
            before = SampleScores(pool["phi"][rows], pool["correct"][rows].astype(bool))
            retain_rows = np.setdiff1d(train_rows, rows[:size])
            before_utility = {"acc_retain": float(pool["correct"][retain_rows].mean()),
                              "acc_test": float(pool["correct"][test_rows].mean())}
            shadow_phi = pool["shadow_phi"][:, [pool_row[i] for i in evidence_ids]]
            never_seen = np.stack([~in_shadow_half(evidence_ids, bank_seed, k) for k in range(len(shadow_phi))])
            for model in models:
                stored = _stored(work, size, number, model, pool, rows, before_utility)
                if stored is None:
                    continue
                after, utility, seconds = stored
                full = Evidence(pool["labels"][rows], np.arange(len(rows)) < size, before, after, shadow_phi,
                                never_seen)
                verdicts = {}
                for bank in bank_sizes:
                    checks = gate_checks(full.with_shadows(bank), before_utility, utility, thresholds,
                                         FORGET_SEED + number, removed_share=size / len(train_rows))
                    verdicts[str(bank)] = {"verdict": verdict_of(checks), "checks": [_brief(c) for c in checks]}
                judged.append({"size": size, "request": number, "model": model, "seconds": seconds,
                               "utility": utility, "before_utility": before_utility, "judgements": verdicts})
    return judged


def _stored(work, size, number, model, pool, rows, before_utility):
    from pipeline.deletion.gate import SampleScores

    if model == UNCHANGED:
        return SampleScores(pool["phi"][rows], pool["correct"][rows].astype(bool)), before_utility, 0.0
    path = score_path(work, size, number, model)
    if not os.path.exists(path):
        return None
    saved = np.load(path)
    return (SampleScores(saved["phi"], saved["correct"].astype(bool)),
            {"acc_retain": float(saved["acc_retain"]), "acc_test": float(saved["acc_test"])}, float(saved["seconds"]))


def _brief(check: dict) -> dict:
    keep = ("check", "outcome", "p_value", "input_p_value", "limit", "request_value", "reference_value", "measured")
    return {key: check.get(key) for key in keep}


def table(judged: list[dict], sizes, models, bank_sizes) -> str:
    """Markdown: accepted / rejected / not verifiable per model and request size, one block per bank size."""
    lines = []
    for bank in bank_sizes:
        lines += ["", f"**{'no bank' if not bank else f'bank of {bank} shadows'}** (accepted / rejected / not "
                      "verifiable, of the requests run)", "",
                  "| model | " + " | ".join(f"{size} id{'s' if size > 1 else ''}" for size in sizes) + " |",
                  "|---|" + "---|" * len(sizes)]
        for model in models:
            cells = []
            for size in sizes:
                counts = Counter(j["judgements"][str(bank)]["verdict"] for j in judged
                                 if j["model"] == model and j["size"] == size)
                runs = sum(counts.values())
                cells.append(f"{counts['accepted']} / {counts['rejected']} / {counts['not_verifiable']}" +
                             (f" (of {runs})" if runs else " (none run)"))
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def failing_checks(judged: list[dict], bank: int) -> str:
    """Per model and size, how often each check failed (why requests were rejected)."""
    counts = Counter()
    for j in judged:
        for check in j["judgements"][str(bank)]["checks"]:
            if check["outcome"] == "failed":
                counts[(j["model"], j["size"], check["check"])] += 1
    return "; ".join(f"{model} n={size} {check} {count}" for (model, size, check), count in sorted(counts.items()))


# ---- main -------------------------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    from pipeline.deletion.gate import GateThresholds

    defaults = GateThresholds()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="folder for the data, models, bank, scores and the table")
    p.add_argument("--requests", type=int, default=20, help="requests per size")
    p.add_argument("--sizes", default="1,30,300", help="request sizes (ids), comma-separated")
    p.add_argument("--models", default=",".join((*TRAINED[:1], UNCHANGED, *TRAINED[1:])))
    p.add_argument("--shadows", type=int, default=16, help="the bank's shadows")
    p.add_argument("--bank-sizes", default="0,8,16", help="judge with no bank (0) and with the first K shadows")
    p.add_argument("--cpus", type=int, default=2, help="Ray tasks at once (one torch thread each)")
    p.add_argument("--alpha", type=float, default=defaults.alpha)
    p.add_argument("--max-acc-drop", type=float, default=defaults.max_acc_drop)
    p.add_argument("--acc-drop-per-share", type=float, default=defaults.acc_drop_per_share)
    p.add_argument("--permutations", type=int, default=defaults.permutations)
    p.add_argument("--estimate", action="store_true", help="print the cost of what is left, run nothing")
    p.add_argument("--table-only", action="store_true", help="judge the stored scores again; train nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from pipeline.deletion.gate import GateThresholds

    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    sizes = [int(size) for size in args.sizes.split(",")]
    models = args.models.split(",")
    bank_sizes = [int(k) for k in args.bank_sizes.split(",")]
    if max(bank_sizes) > args.shadows:
        raise SystemExit(f"--bank-sizes {args.bank_sizes} asks for more than --shadows {args.shadows}")
    thresholds = GateThresholds(args.alpha, args.max_acc_drop, args.acc_drop_per_share, args.permutations)
    thresholds.check()
    started = time.perf_counter()
    if not args.table_only:
        from pipeline.data.converters import prepare
        from pipeline.data.shards import read_index, read_meta
        from pipeline.runs.train import training_recipe

        data = os.path.join(work, "digits-hard")
        if not os.path.exists(os.path.join(data, "_meta.json")):
            prepare("digits-hard", data, seed=0)
        index = read_index(data, read_meta(data))
        estimate(index, work, data, training_recipe({}), sizes, args.requests, models, args.shadows, args.cpus)
        if args.estimate:
            return 0
        run_everything(work, args, sizes, models)
    setup_index, pool = stored_pool(work, args.shadows)
    judged = judge_all(setup_index, pool, work, sizes, args.requests, models, bank_sizes, thresholds,
                       bank_seed=0)
    write_results(work, judged, sizes, models, bank_sizes, thresholds, time.perf_counter() - started)
    return 0


def run_everything(work: str, args, sizes, models) -> None:
    import ray

    from pipeline.runs.shadows import run_tasks

    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_config=ray.LoggingConfig(log_level="ERROR"))
    setup = set_up(work, args.shadows)
    pool_scores(setup, work, args.shadows)
    jobs = request_jobs(setup, work, sizes, args.requests, models)
    print(f"{len(jobs)} request models to run", flush=True)
    run_tasks(jobs, args.cpus, lambda key, result: store(work, key, result))


def stored_pool(work: str, shadows: int):
    from pipeline.data.shards import read_index, read_meta

    data = os.path.join(work, "digits-hard")
    return read_index(data, read_meta(data)), dict(np.load(os.path.join(work, f"pool-{shadows}.npz"),
                                                           allow_pickle=True))


def write_results(work: str, judged: list[dict], sizes, models, bank_sizes, thresholds, seconds: float) -> None:
    with open(os.path.join(work, "judgements.jsonl"), "w") as out:
        for j in judged:
            out.write(json.dumps(j) + "\n")
    text = (f"Gate {json.dumps(thresholds.as_dict())}; {len(judged)} judged (request, model) pairs; "
            f"this command {seconds / 60:.1f} min; model seconds "
            + ", ".join(f"{m} {np.mean([j['seconds'] for j in judged if j['model'] == m] or [0]):.0f}" for m in models)
            + "\n" + table(judged, sizes, models, bank_sizes) + "\n\nFailed checks (no bank): "
            + failing_checks(judged, 0) + f"\n\nFailed checks (bank of {max(bank_sizes)}): "
            + failing_checks(judged, max(bank_sizes)) + "\n")
    with open(os.path.join(work, "table.md"), "w") as out:
        out.write(text)
    print(text, flush=True)


if __name__ == "__main__":
    sys.exit(main())
