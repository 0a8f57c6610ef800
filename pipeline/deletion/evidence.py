"""The per-sample figures the deletion gate judges (pipeline/deletion/gate.py).

The request's samples and a reference of samples no model of the chain trained on (the val split) are scored by
the input and the unlearned model, and with a U-LiRA shadow bank by every shadow: each model's logit margin φ and
whether it is right, per sample. Scoring runs as parallel Ray tasks with the bank's own machinery
(pipeline/runs/shadows.py: the tasks read and decode only the rows they score); `sample_scores` scores a model
held in memory (benchmarks/gate_acceptance.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.data.splits import UNSEEN_SPLIT, hash_unit
from pipeline.deletion.gate import Evidence, SampleScores
from pipeline.errors import ConfigError, UnlearnError
from pipeline.runs.shadows import (DataAccess, ScoreJob, ShadowBank, TaskResources, ensure_shadows, in_shadow_half,
                                   run_tasks, score_model)
from pipeline.train.console import log

# Never-seen samples per requested class for the class-matched checks (digits-hard has about 50 per class in val).
REFERENCE_PER_CLASS = 200
# Never-seen samples of any class for the per-sample (bank) check: a 1-id request's p-value can be no smaller than
# 2 / (reference + 1), so the reference must be well over 2 / level (about 120 at level 0.05 / 3).
REFERENCE_ANY_CLASS = 1000
REFERENCE_SALT = "gate-reference"


def choose_reference(index, request_ids, seed: int, per_class: int = REFERENCE_PER_CLASS,
                     any_class: int = REFERENCE_ANY_CLASS) -> tuple[str, ...]:
    """Val ids to compare the request with: up to `per_class` of each class the request holds and up to
    `any_class` of all val, each the smallest seeded hashes (deterministic, order-free); sorted."""
    ids = np.asarray(index.column("sample_id").to_pylist(), dtype=object)
    labels = index.column("label").to_numpy()
    val = np.asarray(index.column("split").to_pylist(), dtype=object) == UNSEEN_SPLIT
    if not val.any():
        raise ConfigError(f"the gate compares the request with never-seen samples: the data has no "
                          f"{UNSEEN_SPLIT!r} split")
    wanted = set(request_ids)
    requested_classes = {int(label) for sample_id, label in zip(ids, labels) if sample_id in wanted}
    keys = np.fromiter((hash_unit(seed, REFERENCE_SALT, i) for i in ids[val]), dtype=np.float64, count=int(val.sum()))
    order = np.lexsort((ids[val].astype(str), keys))
    ranked_ids, ranked_labels = ids[val][order], labels[val][order]
    chosen = set(ranked_ids[:any_class])
    for label in requested_classes:
        chosen.update(ranked_ids[ranked_labels == label][:per_class])
    return tuple(sorted(chosen))


def sample_scores(model, source, device) -> SampleScores:
    """φ and correctness of `model` on every sample of `source`, in its order."""
    from pipeline.metrics.ulira import logit_margin
    from pipeline.runs.shadows import _logits  # the bank's own scoring loop: the gate scores as its audits do

    logits = _logits(model, source, device).numpy()
    labels = source.labels.numpy()
    return SampleScores(logit_margin(logits, labels), logits.argmax(axis=1) == labels)


@dataclass(frozen=True)
class SampleJob:
    """Score one model (a checkpoint) on `sample_ids`, returned in that order."""

    data: DataAccess
    model_uri: str
    sample_ids: tuple
    resources: TaskResources = field(default_factory=TaskResources)


def score_samples(job: SampleJob) -> dict:
    """Run in a Ray task: {"phi", "correct"} in the order of job.sample_ids."""
    from pipeline.models import load_checkpoint
    from pipeline.runs.shadows import _task_setup, decode_rows, rows_of
    from pipeline.train.datasets import read_layout

    device = _task_setup(job.resources.cpus, job.resources.gpus)
    layout = read_layout(job.data.uri, job.data.meta)
    source = decode_rows(job.data, layout, rows_of(layout, job.sample_ids))
    scores = sample_scores(load_checkpoint(job.model_uri)[0].to(device), source, device)
    position = {sample_id: row for row, sample_id in enumerate(source.sample_ids)}
    order = [position[sample_id] for sample_id in job.sample_ids]
    return {"phi": scores.phi[order], "correct": scores.correct[order]}


@dataclass(frozen=True)
class BankUse:
    """A bank the gate scores with: its first `shadows` shadows (trained now where missing)."""

    bank: ShadowBank
    shadows: int


def gather_evidence(access: DataAccess, sample_ids: tuple, labels: np.ndarray, is_request: np.ndarray,
                    input_uri: str, output_uri: str, bank: BankUse | None, resources: TaskResources) -> tuple:
    """(Evidence, bank summary or None): the input and unlearned models, and the bank's shadows, scored on
    `sample_ids` (the request and its reference) as parallel Ray tasks."""
    served, bank_state = [], None
    if bank:
        bank_state = ensure_shadows(bank.bank, bank.shadows, access, resources)
        served = sorted(bank_state["records"])
        if len(served) < bank.shadows:
            raise UnlearnError(f"only {len(served)} of {bank.shadows} shadows of {bank.bank.uri} could be trained "
                               f"(shadow {min(bank_state['failed'])}: {bank_state['failed'][min(bank_state['failed'])]})")
    jobs = {role: (score_samples, SampleJob(access, uri, sample_ids, resources))
            for role, uri in (("input", input_uri), ("output", output_uri))}
    jobs.update({shadow: (score_model, ScoreJob(access, bank.bank.checkpoint(shadow), sample_ids, resources=resources))
                 for shadow in served})
    log(f"gate: scoring {int(is_request.sum())} requested and {int((~is_request).sum())} never-seen samples with the "
        f"input and the unlearned model" + (f" and {len(served)} shadows of {bank.bank.uri}" if served else ""))
    results = run_tasks(jobs)
    failed = {str(key): result["failed"] for key, result in results.items() if "failed" in result}
    if failed:
        raise UnlearnError(f"the gate could not score its samples: {failed}")
    scores = {role: SampleScores(np.asarray(results[role]["phi"]), np.asarray(results[role]["correct"], bool))
              for role in ("input", "output")}
    evidence = Evidence(np.asarray(labels), np.asarray(is_request, bool), scores["input"], scores["output"])
    if not served:
        return evidence, None
    shadow_phi = np.stack([np.asarray(results[shadow]["phi"]) for shadow in served])
    never_seen = np.stack([~in_shadow_half(sample_ids, bank.bank.seed, shadow) for shadow in served])
    summary = {"uri": bank.bank.uri, "seed": bank.bank.seed, "shadows": len(served),
               "trained_now": bank_state["trained_now"], "train_wall_seconds": bank_state["train_wall_seconds"]}
    return Evidence(evidence.labels, evidence.is_request, evidence.before, evidence.after, shadow_phi,
                    never_seen), summary
