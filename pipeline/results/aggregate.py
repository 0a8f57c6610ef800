"""Mean ± std over seeds per method, the numbers behind every table, plot and regression check.

Choices, stated once:
- Records are grouped by (dataset, model, forget_spec, method); a table gets one
  block per (dataset, model, forget_spec).
- Several records for the same seed (a rerun) are averaged first, so each seed
  weighs the same.
- std is the sample standard deviation over seeds (ddof=1): it estimates the
  seed-to-seed spread rather than describing the few seeds at hand. With one
  seed it is None (shown as the mean alone), never a misleading 0.
- A metric that is None in some seeds (e.g. gold metrics only computed for
  some) is averaged over the seeds that have it; `Stat.n` says how many.
- Only records of kind unlearn/eval/bench enter method tables: `train` records
  describe producing the original model and `sweep-trial` records are
  hyperparameter trials, which have their own heatmaps.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import defaultdict
from typing import Iterable

import pandas as pd

from pipeline.results.records import PHASE_KEYS, ResultRecord

TABLE_KINDS = ("unlearn", "eval", "bench")
REFERENCE_METHODS = ("original", "retrain")
STD_DDOF = 1
SUMMARY_METRICS = ("acc_forget", "acc_retain", "acc_test", "acc_unseen", "mia", "avg_gap",
                   "jsd_e4", "rf_jsd_e4", "rf_jsd_floor_e4", "unlearn_seconds", "unlearn_minutes")
GroupKey = tuple[str, str, str]


@dataclasses.dataclass(frozen=True)
class Stat:
    mean: float | None
    std: float | None  # None with fewer than two seeds
    n: int  # seeds that had a value


@dataclasses.dataclass
class MethodSummary:
    dataset: str
    model: str
    forget_spec: str
    method: str
    seeds: tuple[int, ...]
    stats: dict[str, Stat]
    phases: dict[str, float | None]  # mean seconds per phase over seeds
    time_ratio: float | None  # mean unlearn time / retrain's mean unlearn time in the same group

    @property
    def group(self) -> GroupKey:
        return (self.dataset, self.model, self.forget_spec)

    def mean(self, metric: str) -> float | None:
        return self.stats[metric].mean

    def std(self, metric: str) -> float | None:
        return self.stats[metric].std


def _number(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def record_values(record: ResultRecord) -> dict[str, float | None]:
    """The summary metrics of one record; ×1e4 JSDs fall back to the raw JSD when not stored."""
    metrics = record.metrics
    values = {key: _number(metrics.get(key)) for key in ("acc_forget", "acc_retain", "acc_test",
                                                         "acc_unseen", "mia", "avg_gap")}
    for name in ("jsd", "rf_jsd", "rf_jsd_floor"):
        stored = _number(metrics.get(f"{name}_e4"))
        values[f"{name}_e4"] = stored if stored is not None else _scaled(_number(metrics.get(name)), 1e4)
    seconds = _number(record.unlearn_seconds)
    if seconds is None:
        seconds = _number(record.phases.get("unlearn"))
    values["unlearn_seconds"] = seconds
    values["unlearn_minutes"] = _scaled(seconds, 1 / 60)
    return values


def _mean_or_none(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def stat_over_seeds(per_seed: list[float | None]) -> Stat:
    values = [value for value in per_seed if value is not None]
    std = statistics.stdev(values) if len(values) > STD_DDOF else None
    return Stat(mean=_mean_or_none(values), std=std, n=len(values))


def _per_seed_means(records: list[ResultRecord], value_of) -> list[float | None]:
    """value_of(record) averaged within each seed, one entry per seed in seed order."""
    by_seed: dict[int, list[float]] = defaultdict(list)
    for record in records:
        seed_values = by_seed[record.seed]  # every seed gets an entry, even when its value is missing
        value = value_of(record)
        if value is not None:
            seed_values.append(value)
    return [_mean_or_none(by_seed[seed]) for seed in sorted(by_seed)]


def order_methods(methods: Iterable[str], method_order: Iterable[str] | None = None) -> list[str]:
    """original, retrain, then `method_order` (as given), then any others alphabetically."""
    present = set(methods)
    preferred = [*REFERENCE_METHODS, *(method_order or ())]
    ordered = list(dict.fromkeys(method for method in preferred if method in present))
    return ordered + sorted(present - set(ordered))


def _summarize_method(group: GroupKey, method: str, records: list[ResultRecord]) -> MethodSummary:
    stats = {metric: stat_over_seeds(_per_seed_means(records, lambda r, m=metric: record_values(r)[m]))
             for metric in SUMMARY_METRICS}
    phases = {phase: stat_over_seeds(_per_seed_means(records, lambda r, p=phase: _number(r.phases.get(p)))).mean
              for phase in PHASE_KEYS}
    return MethodSummary(*group, method=method, seeds=tuple(sorted({r.seed for r in records})),
                         stats=stats, phases=phases, time_ratio=None)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def summarize(records: Iterable[ResultRecord], method_order: Iterable[str] | None = None,
              kinds: Iterable[str] = TABLE_KINDS) -> list[MethodSummary]:
    """One MethodSummary per (dataset, model, forget_spec, method), groups sorted, methods in table order."""
    kinds = set(kinds)
    grouped: dict[GroupKey, dict[str, list[ResultRecord]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record.kind in kinds:
            grouped[(record.dataset, record.model, record.forget_spec)][record.method].append(record)
    summaries = []
    for group in sorted(grouped):
        methods = grouped[group]
        rows = [_summarize_method(group, method, methods[method])
                for method in order_methods(methods, method_order)]
        retrain_time = next((row.mean("unlearn_seconds") for row in rows if row.method == "retrain"), None)
        for row in rows:
            row.time_ratio = _ratio(row.mean("unlearn_seconds"), retrain_time)
        summaries.extend(rows)
    return summaries


def groups_of(summaries: list[MethodSummary]) -> list[GroupKey]:
    return list(dict.fromkeys(summary.group for summary in summaries))


def summary_frame(summaries: list[MethodSummary]) -> pd.DataFrame:
    """One row per method and group: <metric>_mean, <metric>_std, <metric>_n, time_ratio, phase_<name>_seconds."""
    rows = []
    for summary in summaries:
        row = {"dataset": summary.dataset, "model": summary.model, "forget_spec": summary.forget_spec,
               "method": summary.method, "n_seeds": len(summary.seeds),
               "seeds": " ".join(str(seed) for seed in summary.seeds)}
        for metric, stat in summary.stats.items():
            row.update({f"{metric}_mean": stat.mean, f"{metric}_std": stat.std, f"{metric}_n": stat.n})
        row["time_ratio"] = summary.time_ratio
        row.update({f"phase_{phase}_seconds": seconds for phase, seconds in summary.phases.items()})
        rows.append(row)
    return pd.DataFrame(rows, columns=_summary_columns())


def _summary_columns() -> list[str]:
    """Column order of summary_frame, also for an empty summary list (a CSV with just a header)."""
    metrics = [f"{metric}_{part}" for metric in SUMMARY_METRICS for part in ("mean", "std", "n")]
    phases = [f"phase_{phase}_seconds" for phase in PHASE_KEYS]
    return ["dataset", "model", "forget_spec", "method", "n_seeds", "seeds", *metrics, "time_ratio", *phases]
