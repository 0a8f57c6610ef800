"""Nightly regression check: compare per-method means with the previous run against tolerance bands.

Band vocabulary (per metric, any combination):

    max_drop / max_rise / max_change                      absolute, in the metric's unit
    max_drop_ratio / max_rise_ratio / max_change_ratio    relative to the previous mean (0.25 = 25 %)

A band may only watch the direction in which its metric gets worse, so an
improvement is never flagged: accuracies on retain/test/unseen data are worse
when they drop; Avg Gap, JSD, RF-JSD and time are worse when they rise. Forget
accuracy and MIA have no better direction (the target is the retrained model:
too high means not forgotten, too low over-forgets and is itself detectable),
so they accept any of the six.

Besides band violations, a method present in the previous run but missing now,
and a banded metric that had a value before but none now, are failures; a
method that is new in the current run is reported for information only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable

from pipeline.errors import ConfigError
from pipeline.results.aggregate import MethodSummary, summarize
from pipeline.results.records import ResultRecord, has_records, load_records

WORSE_WHEN = {
    "acc_forget": "either", "mia": "either",
    "acc_retain": "down", "acc_test": "down", "acc_unseen": "down",
    "avg_gap": "up", "jsd_e4": "up", "rf_jsd_e4": "up", "unlearn_seconds": "up", "unlearn_minutes": "up",
    # U-LiRA (bench u_lira block): a per-example attack that separates D_f from never-seen data better is worse.
    "ulira_auc": "up", "ulira_shadow_tpr_1pct": "up",
}
BAND_RULES = {  # rule -> (direction it watches, relative?)
    "max_drop": ("down", False), "max_rise": ("up", False), "max_change": ("either", False),
    "max_drop_ratio": ("down", True), "max_rise_ratio": ("up", True), "max_change_ratio": ("either", True),
}
DEFAULT_BANDS = {
    "acc_test": {"max_drop": 0.02},
    "acc_retain": {"max_drop": 0.02},
    "acc_forget": {"max_change": 0.03},
    "mia": {"max_change": 0.05},
    "avg_gap": {"max_rise": 0.02},
    "jsd_e4": {"max_rise": 5.0},
    "rf_jsd_e4": {"max_rise": 5.0},
    "unlearn_seconds": {"max_rise_ratio": 0.25},
}
# Means recomputed from the same numbers can differ in the last bits; that is not a regression.
FLOAT_SLACK = 1e-9
FAILURE_KINDS = ("band", "missing-method", "missing-metric")


@dataclasses.dataclass(frozen=True)
class Regression:
    kind: str  # "band", "missing-method", "missing-metric" (failures) or "new-method" (information)
    dataset: str
    model: str
    forget_spec: str
    method: str
    metric: str | None = None
    previous: float | None = None
    current: float | None = None
    change: float | None = None  # current - previous, in the metric's unit
    relative_change: float | None = None  # change / |previous|
    band: str = ""  # e.g. "max_drop 0.02"

    @property
    def is_failure(self) -> bool:
        return self.kind in FAILURE_KINDS


def validate_bands(bands: dict) -> None:
    """ConfigError for an unknown metric or rule, a negative limit, or a rule that would flag improvements."""
    for metric, rules in bands.items():
        if metric not in WORSE_WHEN:
            raise ConfigError(f"no regression band for unknown metric {metric!r}; known: {', '.join(WORSE_WHEN)}")
        if not isinstance(rules, dict) or not rules:
            raise ConfigError(f"bands[{metric!r}] must be a non-empty mapping such as {{'max_drop': 0.02}}")
        for rule, limit in rules.items():
            if rule not in BAND_RULES:
                raise ConfigError(f"unknown band rule {rule!r} for {metric}; use one of {', '.join(BAND_RULES)}")
            if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0:
                raise ConfigError(f"bands[{metric!r}][{rule!r}] must be a number >= 0, not {limit!r}")
            watched, worse = BAND_RULES[rule][0], WORSE_WHEN[metric]
            if worse != "either" and watched != worse:
                raise ConfigError(f"{metric} gets worse when it goes {worse}; {rule} would flag improvements "
                                  f"(use max_{'drop' if worse == 'down' else 'rise'}[_ratio])")


def _relative(change: float, previous: float) -> float:
    if previous == 0:
        return 0.0 if change == 0 else math.copysign(math.inf, change)
    return change / abs(previous)


def _violation(rule: str, limit: float, previous: float, current: float) -> bool:
    direction, relative = BAND_RULES[rule]
    change = current - previous
    amount = _relative(change, previous) if relative else change
    worsening = {"down": -amount, "up": amount, "either": abs(amount)}[direction]
    return worsening > limit + FLOAT_SLACK


def _check_method(previous: MethodSummary, current: MethodSummary, bands: dict) -> list[Regression]:
    found = []
    where = dict(dataset=current.dataset, model=current.model, forget_spec=current.forget_spec, method=current.method)
    for metric, rules in bands.items():
        before, now = previous.mean(metric), current.mean(metric)
        if before is None:
            continue  # nothing to compare against
        if now is None:
            found.append(Regression("missing-metric", **where, metric=metric, previous=before,
                                    band="had a value in the previous run"))
            continue
        for rule, limit in rules.items():
            if _violation(rule, limit, before, now):
                found.append(Regression("band", **where, metric=metric, previous=before, current=now,
                                        change=now - before, relative_change=_relative(now - before, before),
                                        band=f"{rule} {limit:g}"))
    return found


def _by_key(summaries: list[MethodSummary]) -> dict[tuple, MethodSummary]:
    return {(*s.group, s.method): s for s in summaries}


def compare(current_records: Iterable[ResultRecord], previous_records: Iterable[ResultRecord],
            bands: dict | None = None) -> list[Regression]:
    """Every band violation, missing method/metric and new method between two runs' per-method means."""
    bands = DEFAULT_BANDS if bands is None else bands
    validate_bands(bands)
    current, previous = _by_key(summarize(current_records)), _by_key(summarize(previous_records))
    found: list[Regression] = []
    for key, before in previous.items():
        if key in current:
            found.extend(_check_method(before, current[key], bands))
        else:
            found.append(Regression("missing-method", *key, band="present in the previous run"))
    found.extend(Regression("new-method", *key, band="not in the previous run")
                 for key in current if key not in previous)
    return found


def _number(value: float) -> str:
    return f"{value:.4g}"


def _describe(regression: Regression) -> str:
    where = f"{regression.method} [{regression.dataset} · {regression.model} · forget {regression.forget_spec}]"
    if regression.kind == "missing-method":
        return f"- {where}: missing from the current run (present in the previous run)"
    if regression.kind == "new-method":
        return f"+ {where}: new in the current run (nothing to compare with)"
    if regression.kind == "missing-metric":
        return (f"- {where} {regression.metric}: no value now, was {_number(regression.previous)} "
                "in the previous run")
    relative = regression.relative_change
    relative_text = "" if relative is None or math.isinf(relative) else f", {relative:+.1%}"
    return (f"- {where} {regression.metric}: {_number(regression.previous)} → {_number(regression.current)} "
            f"({regression.change:+.4g}{relative_text}); band {regression.band}")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A run checked against previous runs: the text for the console and the report, and whether it regressed."""

    text: str
    regressed: bool
    compared_with: tuple[str, ...]  # the previous runs that held records
    without_records: tuple[str, ...]  # the ones that held none


def nothing_to_compare(uris: Iterable[str]) -> str:
    return (f"Nothing to compare with: no result records under {', '.join(uris)} (the first run, or the previous one "
            "was skipped or stopped before recording anything). This run's records are the reference for the next.")


def compare_with_previous(current_records: Iterable[ResultRecord], previous_uris: Iterable[str],
                          bands: dict | None = None) -> Comparison:
    """The regression check against the previous runs that hold records. A previous run with none is the first
    night or one after a skipped night, not an error: after a night of GPU work the report must still be written,
    so it is named in the text and left out, and with none left there is nothing to compare with (no regression)."""
    previous_uris = list(previous_uris)
    found = [uri for uri in previous_uris if has_records(uri)]
    missing = tuple(uri for uri in previous_uris if uri not in found)
    if not found:
        return Comparison(nothing_to_compare(missing), False, (), missing)
    regressions = compare(current_records, load_records(*found), bands)
    text = format_regressions(regressions)
    if missing:
        text += f"\nNot compared: no result records under {', '.join(missing)}."
    return Comparison(text, any(r.is_failure for r in regressions), tuple(found), missing)


def format_regressions(regressions: list[Regression]) -> str:
    """Human-readable summary: what moved beyond its band and by how much, then information lines."""
    failures = [r for r in regressions if r.is_failure]
    notes = [r for r in regressions if not r.is_failure]
    lines = [f"{len(failures)} regression(s) beyond the bands:" if failures else "No regressions beyond the bands."]
    lines += [_describe(r) for r in failures]
    if notes:
        lines += ["Information:"] + [_describe(r) for r in notes]
    return "\n".join(lines)
