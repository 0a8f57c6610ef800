"""What a sweep minimises: RF-JSD, with trials that damage the model ruled out.

A trial is feasible when its retain and test accuracies are each at most
`max_drop` below the original model's. Tune minimises `objective`, which is
RF-JSD for feasible trials and RF-JSD plus a penalty above RF-JSD's whole
range otherwise, so schedulers rank every infeasible trial below every
feasible one; the best trial is then picked among feasible trials only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

# RF-JSD is a mean of Jensen-Shannon divergences (natural log), so it never exceeds ln 2.
WORST_RF_JSD = math.log(2)
INFEASIBLE_PENALTY = 1.0  # > ln 2: an infeasible objective is worse than any feasible one
GUARDED_ACCURACIES = ("acc_retain", "acc_test")


def _number(value) -> float | None:
    """A finite float, or None for a missing or NaN metric (a diverged model gives NaN)."""
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class FeasibilityRule:
    """The original model's accuracies and how far below them a trial may fall."""

    acc_retain: float
    acc_test: float
    max_drop: float = 0.05

    def feasible(self, metrics: dict) -> bool:
        for key in GUARDED_ACCURACIES:
            value = _number(metrics.get(key))
            if value is None or value < getattr(self, key) - self.max_drop:
                return False
        return True

    def judge(self, metrics: dict) -> dict:
        """{"feasible": bool, "objective": float} for a trial's (epoch or final) metrics."""
        feasible = self.feasible(metrics)
        rf_jsd = _number(metrics.get("rf_jsd"))
        objective = (WORST_RF_JSD if rf_jsd is None else rf_jsd) + (0.0 if feasible else INFEASIBLE_PENALTY)
        return {"feasible": feasible, "objective": objective}


def best_trial(trials: pd.DataFrame) -> pd.Series | None:
    """The finished, feasible trial with the lowest RF-JSD (first on ties), or None if there is none.

    Trials a scheduler stopped early never ran their last epochs, so they are not candidates.
    """
    candidates = trials[(trials["status"] == "finished") & (trials["feasible"] == True)  # noqa: E712 (NA-safe)
                        & trials["rf_jsd"].notna()]
    if candidates.empty:
        return None
    return candidates.loc[candidates["rf_jsd"].astype(float).idxmin()]
