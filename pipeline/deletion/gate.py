"""The acceptance gate of a deletion request: do the forgotten samples look unseen, without a retrained model?

Four checks, each against the input model or data the model never trained on:
- RF-JSD of the unlearned model on the forgotten samples is at most its sampling floor (what a model that
  never saw them scores from sampling alone, pipeline/metrics/floor.py) plus a margin in floor deviations;
- the membership-inference attack calls at most as many forgotten samples "member" as it calls unseen
  (val) samples, plus a margin in standard errors of a rate measured on that many samples;
- retain and test accuracy fall at most `max_acc_drop` below the input model's.
A check whose figure could not be measured fails: a request is accepted on evidence only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GateThresholds:
    """Margins in units of sampling noise, so one default fits a request of 30 ids and one of 100,000: a model
    that truly never saw the samples differs from the unseen level by sampling alone, and that spread shrinks
    as the request grows. Measured on digits-hard (README "Deletion requests"): 30-sample LoTUS requests land
    below both limits, the unchanged input model lands above both."""

    rf_jsd_floor_stds: float = 1.5  # RF-JSD may exceed its floor by this many of the floor's standard deviations
    mia_stds: float = 2.0  # the member rate on D_f may exceed D_u's by this many binomial standard errors (n = |D_f|)
    max_acc_drop: float = 0.05  # retain and test accuracy may fall this much below the input model's

    def as_dict(self) -> dict:
        return asdict(self)


def member_rate_spread(rate: float | None, count: int) -> float | None:
    """Standard error of a member rate measured on `count` samples; the rate is kept half a sample away from
    0 and 1, where the binomial formula would claim no noise at all."""
    if rate is None or count <= 0:
        return None
    p = min(max(rate, 0.5 / count), 1 - 0.5 / count)
    return math.sqrt(p * (1 - p) / count)


def _check(name: str, meaning: str, measured: float | None, limit: float | None, direction: str = "at most") -> dict:
    passed = (measured is not None and limit is not None
              and (measured <= limit if direction == "at most" else measured >= limit))
    return {"check": name, "meaning": meaning, "measured": measured, "limit": limit, "direction": direction,
            "passed": passed}


def _plus(value: float | None, margin: float | None) -> float | None:
    return None if value is None or margin is None else value + margin


def _times(count: float, spread: float | None) -> float | None:
    return None if spread is None else count * spread


def gate_checks(before: dict, after: dict, forget_count: int, thresholds: GateThresholds) -> list[dict]:
    """Each check with its measured value, its limit and whether it passed. `before`/`after`: the input and the
    unlearned model's metrics from the same evaluation (pipeline/metrics/summary.py plus the RF-JSD floor);
    `forget_count`: how many samples were forgotten."""
    rf_limit = _plus(after.get("rf_jsd_floor_e4"),
                     _times(thresholds.rf_jsd_floor_stds, after.get("rf_jsd_floor_std_e4")))
    mia_limit = _plus(after.get("mia_unseen"),
                      _times(thresholds.mia_stds, member_rate_spread(after.get("mia_unseen"), forget_count)))
    checks = [
        _check("rf_jsd_e4", "The unlearned model's predictions on the forgotten samples are as close to its "
               "predictions on never-seen samples as sampling alone allows (RF-JSD x1e4 at most its sampling floor "
               f"plus {thresholds.rf_jsd_floor_stds:g} of the floor's standard deviations)",
               after.get("rf_jsd_e4"), rf_limit),
        _check("mia", "A membership-inference attack recognises the forgotten samples as training data no more "
               "often than it wrongly recognises samples the model never saw, within sampling noise "
               f"({thresholds.mia_stds:g} standard errors)", after.get("mia"), mia_limit),
    ]
    for split, words in (("retain", "the samples it keeps"), ("test", "held-out test samples")):
        key = f"acc_{split}"
        checks.append(_check(key, f"The model still classifies {words} as well as before, within "
                             f"{thresholds.max_acc_drop:.2f}", after.get(key),
                             _plus(before.get(key), -thresholds.max_acc_drop), direction="at least"))
    return checks


def failed_checks(checks: list[dict]) -> list[str]:
    """A sentence per failed check, for the record's reason and the console."""
    def shown(value):
        return "not measured" if value is None else f"{value:.4g}"

    return [f"{c['check']} {shown(c['measured'])} (must be {c['direction']} {shown(c['limit'])})"
            for c in checks if not c["passed"]]
