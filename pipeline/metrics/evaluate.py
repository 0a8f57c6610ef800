"""One batched pass per split: every model that needs a split sees each batch of it once.

Models are named by role: "unlearned" (the model under evaluation), "original"
(needed on D_u only, for RF-JSD's Q_c) and optionally "gold" (the retrained
model, for JSD and Avg Gap). Splits are named "forget", "retain", "test",
"unseen". A plan says which (model, split) runs to make, so the caller can add
or drop runs, e.g. the original's own metrics row is the same call with the
original passed as "unlearned" too (one module under two names is run once).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.data.sources import BatchSource
from pipeline.distributed import unwrap
from pipeline.metrics.accumulate import PairStats, SplitStats

UNLEARNED, ORIGINAL, GOLD = "unlearned", "original", "gold"
FORGET, RETAIN, TEST, UNSEEN = "forget", "retain", "test", "unseen"
EVAL_SPLITS = (FORGET, RETAIN, TEST, UNSEEN)


@dataclass(frozen=True)
class EvalPlan:
    """(model, split) runs to make, and (model a, model b, split) pairs whose per-sample JS to sum."""

    runs: frozenset[tuple[str, str]]
    pairs: frozenset[tuple[str, str, str]] = frozenset()

    def models_on(self, split: str) -> list[str]:
        models = {model for model, run_split in self.runs if run_split == split}
        models |= {name for a, b, pair_split in self.pairs if pair_split == split for name in (a, b)}
        return sorted(models)

    def splits(self) -> list[str]:
        return sorted({split for _, split in self.runs} | {split for _, _, split in self.pairs})


def default_plan(model_names, split_names) -> EvalPlan:
    """Everything the summary reports, limited to the models and splits at hand.

    The unlearned and gold models run on every split; the original only on D_u (Q_c of RF-JSD);
    JS(unlearned‖gold) per sample on D_f.
    """
    models, splits = set(model_names), set(split_names) & set(EVAL_SPLITS)
    runs = {(model, split) for model in models & {UNLEARNED, GOLD} for split in splits}
    if ORIGINAL in models and UNSEEN in splits:
        runs.add((ORIGINAL, UNSEEN))
    pairs = {(UNLEARNED, GOLD, FORGET)} if {UNLEARNED, GOLD} <= models and FORGET in splits else set()
    return EvalPlan(frozenset(runs), frozenset(pairs))


@dataclass
class EvalResult:
    """Reduced statistics, identical on every worker."""

    num_classes: int
    split_stats: dict[tuple[str, str], SplitStats] = field(default_factory=dict)
    pair_stats: dict[tuple[str, str, str], PairStats] = field(default_factory=dict)

    def stats(self, model: str, split: str) -> SplitStats | None:
        return self.split_stats.get((model, split))


@torch.no_grad()
def _logits_per_model(modules: dict[str, nn.Module], names: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each distinct module runs once per batch, even when it plays several roles."""
    by_identity: dict[int, torch.Tensor] = {}
    logits = {}
    for name in names:
        module = modules[name]
        if id(module) not in by_identity:
            by_identity[id(module)] = module(images)
        logits[name] = by_identity[id(module)]
    return logits


def _evaluate_split(modules, source: BatchSource, split: str, plan: EvalPlan, result: EvalResult,
                    device: torch.device, batch_size: int) -> None:
    names = plan.models_on(split)
    run_names = [model for model in names if (model, split) in plan.runs]
    for model in run_names:
        result.split_stats[(model, split)] = SplitStats(result.num_classes, device)
    pairs = [pair for pair in sorted(plan.pairs) if pair[2] == split]
    for pair in pairs:
        result.pair_stats[pair] = PairStats(device)
    for batch in source.batches(batch_size):
        labels = batch["label"].to(device)
        logits = _logits_per_model(modules, names, batch["image"].to(device))
        for model in run_names:
            result.split_stats[(model, split)].update(logits[model], labels, batch["sample_id"])
        for pair in pairs:
            result.pair_stats[pair].update(logits[pair[0]], logits[pair[1]])


def _check_plan(plan: EvalPlan, models: dict, sources: dict) -> None:
    missing_models = {model for split in plan.splits() for model in plan.models_on(split)} - set(models)
    missing_splits = set(plan.splits()) - set(sources)
    if missing_models or missing_splits:
        raise ValueError(f"evaluation plan needs models {sorted(missing_models)} and splits "
                         f"{sorted(missing_splits)} that were not given")


def evaluate(models: dict[str, nn.Module], sources: dict[str, BatchSource], device: torch.device, num_classes: int,
             batch_size: int = 256, plan: EvalPlan | None = None,
             reuse: dict[tuple[str, str], SplitStats] | None = None) -> EvalResult:
    """Run the plan (default: `default_plan`) and reduce across workers; every worker gets the full result.

    `sources` are this worker's shards; collectives happen only after all batches, so shards
    may differ in size. Models are put in eval mode and given back in the mode they came in.
    `reuse`: reduced statistics of (model, split) runs from an earlier call whose model has not changed
    since (a frozen original or gold model); those runs are taken as they are instead of run again.
    Every worker must pass the same keys, so all issue the same collectives.
    """
    plan = plan or default_plan(models, sources)
    _check_plan(plan, models, sources)
    reused = {key: stats for key, stats in (reuse or {}).items() if key in plan.runs}
    plan = EvalPlan(plan.runs - reused.keys(), plan.pairs)
    # The plain modules: a DDP forward may broadcast buffers, a collective that would hang workers holding
    # unequal batch counts.
    modules = {name: unwrap(model) for name, model in models.items()}
    was_training = {name: module.training for name, module in modules.items()}
    result = EvalResult(num_classes)
    try:
        for module in modules.values():
            module.eval()
        for split in plan.splits():
            _evaluate_split(modules, sources[split], split, plan, result, device, batch_size)
    finally:
        for name, module in modules.items():
            module.train(was_training[name])
    # Reduce in sorted key order: collectives must be issued in the same order on every worker.
    for key in sorted(result.split_stats):
        result.split_stats[key].reduce()
    for key in sorted(result.pair_stats):
        result.pair_stats[key].reduce()
    result.split_stats.update(reused)
    return result
