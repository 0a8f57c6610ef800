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
- Where the time went: a phase's share and its images/s are ratios of means
  over the seeds that know both numbers (mean images / mean seconds), i.e. the
  pooled throughput, not a mean of per-seed ratios that one short seed skews.
  The shares are of the method's own run time, the sum of its phases: in a
  bench every method's record carries the whole fit's `total` (all methods'
  work), so `total` would understate each method's shares.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import defaultdict
from typing import Iterable

import pandas as pd

from pipeline.results.records import IMAGE_PHASES, PHASE_KEYS, ResultRecord

TABLE_KINDS = ("unlearn", "eval", "bench")
REFERENCE_METHODS = ("original", "retrain")
STD_DDOF = 1
# A U-LiRA audit's figures in a bench record (pipeline/runs/audit_mia.record_metrics): the target's AUC and the
# shadow trials' AUC and TPR at 1 % FPR; ulira_trusted is 1 where both sanity anchors passed, 0 where one failed.
ULIRA_METRICS = ("ulira_auc", "ulira_shadow_auc", "ulira_shadow_tpr_1pct", "ulira_trusted")
SUMMARY_METRICS = ("acc_forget", "acc_retain", "acc_test", "acc_unseen", "mia", "avg_gap",
                   "jsd_e4", "rf_jsd_e4", "rf_jsd_floor_e4", "unlearn_seconds", "unlearn_minutes",
                   "mia_unseen", *ULIRA_METRICS)
GroupKey = tuple[str, str, str]
# The phases that add up to a method's run time (`total` is the sum's wall-clock twin, see the docstring).
SHARE_PHASES = ("startup", "data", "unlearn", "epoch_reports", "eval")
WAIT_PHASES = ("unlearn", "eval")  # phases whose input wait the workers measure
# More than this share of the unlearning spent waiting for the next batch: the data path, not the model, set
# the pace.
INPUT_BOUND_SHARE = 0.5


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
    images: dict[str, float | None] = dataclasses.field(default_factory=dict)  # mean images per IMAGE_PHASES
    input_wait: dict[str, float | None] = dataclasses.field(default_factory=dict)  # mean seconds per WAIT_PHASES
    # Derived over the seeds that know both numbers (see the module docstring); None when unknown.
    phase_shares: dict[str, float | None] = dataclasses.field(default_factory=dict)  # of the run time, 0..1
    throughput: dict[str, float | None] = dataclasses.field(default_factory=dict)  # images/s per IMAGE_PHASES
    wait_shares: dict[str, float | None] = dataclasses.field(default_factory=dict)  # input wait / phase time

    @property
    def group(self) -> GroupKey:
        return (self.dataset, self.model, self.forget_spec)

    def mean(self, metric: str) -> float | None:
        return self.stats[metric].mean

    def std(self, metric: str) -> float | None:
        return self.stats[metric].std

    @property
    def bound(self) -> str | None:
        """'input-bound' when the workers waited on input for more than half the unlearning, else
        'compute-bound'; None without unlearning time or without an input-wait figure."""
        share = self.wait_shares.get("unlearn")
        if share is None:
            return None
        return "input-bound" if share > INPUT_BOUND_SHARE else "compute-bound"


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
                                                         "acc_unseen", "mia", "avg_gap", "mia_unseen",
                                                         *ULIRA_METRICS)}
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


def _phase_seconds(record: ResultRecord, phase: str) -> float | None:
    seconds = _number(record.phases.get(phase))
    if seconds is None and phase == "unlearn":
        seconds = _number(record.unlearn_seconds)  # records that only set unlearn_seconds
    return seconds


def _run_seconds(record: ResultRecord) -> float | None:
    """The method's own run time: the sum of its known phases (older records lack some, e.g. epoch_reports:
    those show no share rather than hiding every share); None when no phase is known."""
    parts = [seconds for phase in SHARE_PHASES if (seconds := _phase_seconds(record, phase)) is not None]
    return sum(parts) if parts else None


def _field_means(records: list[ResultRecord], field: str, keys: tuple[str, ...]) -> dict[str, float | None]:
    """Mean over seeds of record.<field>[key] (images, input_wait), None-safe for records without the field."""
    def value(record: ResultRecord, key: str) -> float | None:
        return _number((getattr(record, field) or {}).get(key))

    return {key: stat_over_seeds(_per_seed_means(records, lambda r, k=key: value(r, k))).mean for key in keys}


def pooled_ratio(records: list[ResultRecord], numerator, denominator) -> float | None:
    """mean(numerator) / mean(denominator) over the seeds where both are known; None if none is or the
    denominator is 0 (a phase that took no time has no rate)."""
    pairs = [(n, d) for n, d in zip(_per_seed_means(records, numerator), _per_seed_means(records, denominator))
             if n is not None and d is not None]
    total = sum(d for _, d in pairs)
    return sum(n for n, _ in pairs) / total if pairs and total > 0 else None


def _images(record: ResultRecord, phase: str) -> float | None:
    """Images through a phase; 0 counts as unknown: a phase that moved no image (the `original` row's
    unlearning) has no rate, and 0 images/s would read as a stall."""
    value = _number((record.images or {}).get(phase))
    return value or None


def _input_wait(record: ResultRecord, phase: str) -> float | None:
    """Seconds of `phase` spent waiting for input, counted only where the phase moved images: the `retrain`
    row's unlearning is the gold model's training, timed in another job, so this fit's 0 s says nothing of it."""
    if _images(record, phase) is None:
        return None
    return _number((record.input_wait or {}).get(phase))


def _time_breakdown(records: list[ResultRecord]) -> dict:
    shares = {phase: pooled_ratio(records, lambda r, p=phase: _phase_seconds(r, p), _run_seconds)
              for phase in SHARE_PHASES}
    throughput = {phase: pooled_ratio(records, lambda r, p=phase: _images(r, p),
                                      lambda r, p=phase: _phase_seconds(r, p)) for phase in IMAGE_PHASES}
    waits = {phase: pooled_ratio(records, lambda r, p=phase: _input_wait(r, p), lambda r, p=phase: _phase_seconds(r, p))
             for phase in WAIT_PHASES}
    return {"images": _field_means(records, "images", IMAGE_PHASES),
            "input_wait": _field_means(records, "input_wait", WAIT_PHASES),
            "phase_shares": shares, "throughput": throughput, "wait_shares": waits}


def _summarize_method(group: GroupKey, method: str, records: list[ResultRecord]) -> MethodSummary:
    stats = {metric: stat_over_seeds(_per_seed_means(records, lambda r, m=metric: record_values(r)[m]))
             for metric in SUMMARY_METRICS}
    phases = {phase: stat_over_seeds(_per_seed_means(records, lambda r, p=phase: _number(r.phases.get(p)))).mean
              for phase in PHASE_KEYS}
    return MethodSummary(*group, method=method, seeds=tuple(sorted({r.seed for r in records})),
                         stats=stats, phases=phases, time_ratio=None, **_time_breakdown(records))


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
        if record.kind in kinds and record.status == "ok":  # a failed run has no metrics: listed apart (report)
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
        row.update({f"phase_{phase}_share": summary.phase_shares.get(phase) for phase in SHARE_PHASES})
        row.update({f"images_{phase}": summary.images.get(phase) for phase in IMAGE_PHASES})
        row.update({f"images_per_s_{phase}": summary.throughput.get(phase) for phase in IMAGE_PHASES})
        row.update({f"input_wait_{phase}_seconds": summary.input_wait.get(phase) for phase in WAIT_PHASES})
        row.update({f"input_wait_{phase}_share": summary.wait_shares.get(phase) for phase in WAIT_PHASES})
        row["bound"] = summary.bound
        rows.append(row)
    return pd.DataFrame(rows, columns=_summary_columns())


def _summary_columns() -> list[str]:
    """Column order of summary_frame, also for an empty summary list (a CSV with just a header)."""
    metrics = [f"{metric}_{part}" for metric in SUMMARY_METRICS for part in ("mean", "std", "n")]
    phases = [f"phase_{phase}_seconds" for phase in PHASE_KEYS]
    breakdown = [*(f"phase_{phase}_share" for phase in SHARE_PHASES), *(f"images_{phase}" for phase in IMAGE_PHASES),
                 *(f"images_per_s_{phase}" for phase in IMAGE_PHASES),
                 *(f"input_wait_{phase}_seconds" for phase in WAIT_PHASES),
                 *(f"input_wait_{phase}_share" for phase in WAIT_PHASES), "bound"]
    return ["dataset", "model", "forget_spec", "method", "n_seeds", "seeds", *metrics, "time_ratio", *phases,
            *breakdown]
