"""U-LiRA: the per-example likelihood-ratio membership attack, adapted to unlearning (DESIGN.md §5).

After LiRA (Carlini et al. 2022) and U-LiRA (Hayes et al. 2024). Shadow models trained on random halves of
the pool give, for every audited example x, two sets of scores: from shadows that trained on x and then
unlearned it ("unlearned") and from shadows that never saw x ("never seen"). A Gaussian is fitted to each, per
example. The target model's score on x is then compared with both:

- online: the log-likelihood ratio log N(φ; μ_in, σ_in) − log N(φ; μ_out, σ_out). Two-sided by construction: a
  forgotten sample that looks *less* member-like than never-seen data (over-unlearning) is as visible as one
  that still looks remembered, because the "unlearned" Gaussian then lies below the "never seen" one.
- offline: only the "never seen" shadows, one-sided: (φ − μ_out) / σ_out, how many standard deviations the
  target's score lies above what models that never saw x give. It needs no unlearned shadows (cheap) but is blind
  to over-unlearning.

The score is φ(x) = z_y − logsumexp_{j≠y} z_j, the logit-scaled true-class confidence log(p_y / (1 − p_y)),
computed from logits so that it stays finite where p_y rounds to 1.

The attack is then evaluated like any binary test: the target's D_f (positives) against never-seen samples
(negatives), by AUC, TPR at a low FPR and balanced accuracy, each with a seeded bootstrap interval.

Numpy only: no torch, no Ray. Scores come in as arrays [shadows, examples] with masks saying which shadow's
score belongs to which group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.errors import ConfigError

ONLINE, OFFLINE = "online", "offline"
VARIANTS = (ONLINE, OFFLINE)
DEFAULT_FPRS = (0.01, 0.001)
# Below this many scores per example in a group, per-example variances are noise: one variance pooled over all
# examples is used instead (LiRA's "global variance"; Carlini et al. found it better below ~64 shadows).
PER_EXAMPLE_VARIANCE_MIN_SCORES = 32
# Each example is "never seen" in exactly half the shadows (complementary pairs) and "unlearned" in up to the
# other half: 4 shadows give 2 "never seen" scores per example and a pooled variance from the rest.
MIN_SHADOWS = 4
MIN_STD = 1e-6  # a group whose scores are all equal would otherwise divide by zero
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95


# ---- the score ---------------------------------------------------------------------------------------------

def logit_margin(logits, labels) -> np.ndarray:
    """φ = z_y − logsumexp_{j≠y} z_j per row (float64): log(p_y / (1 − p_y)) without forming p_y."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be [examples, classes >= 2], not {logits.shape}")
    rows = np.arange(len(labels))
    true = logits[rows, labels]
    others = logits.copy()
    others[rows, labels] = -np.inf
    top = others.max(axis=1)
    # Shifting by the largest other logit keeps every exp() in (0, 1]: no overflow for logits of any size.
    rest = top + np.log(np.exp(others - top[:, None]).sum(axis=1))
    return true - rest


# ---- per-example Gaussians ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GaussianFit:
    """Per-example mean and standard deviation of one group's shadow scores (NaN where an example has none)."""

    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray
    pooled: bool  # one variance for every example (few scores per example)


def fit_gaussians(scores, member, per_example_min: int = PER_EXAMPLE_VARIANCE_MIN_SCORES) -> GaussianFit:
    """Gaussians per example (column) of `scores` [shadows, examples], from the entries where `member` is True.

    Means are always per example. Variances are per example when every example with scores has at least
    `per_example_min` of them, else pooled: the squared deviations from each example's own mean summed over all
    examples, over the summed degrees of freedom (an example with one score adds nothing to it).
    """
    scores, member = np.asarray(scores, dtype=np.float64), np.asarray(member, dtype=bool)
    if scores.shape != member.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and mask {member.shape} must be the same [shadows, examples] shape")
    count = member.sum(axis=0)
    # np.where, not multiplication: a failed shadow's NaN score outside the mask must not leak into the sums.
    total = np.where(member, scores, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, np.nan)
    squares = np.where(member, (scores - np.where(count > 0, mean, 0.0)) ** 2, 0.0).sum(axis=0)
    seen = count > 0
    per_example = seen.any() and count[seen].min() >= per_example_min
    if per_example:
        variance = np.where(seen, squares / np.maximum(count - 1, 1), np.nan)
    else:
        freedom = np.maximum(count - 1, 0).sum()
        if freedom == 0:
            raise ValueError("no example has two scores in this group: a pooled variance needs more shadows")
        variance = np.where(seen, squares.sum() / freedom, np.nan)
    return GaussianFit(mean, np.maximum(np.sqrt(variance), MIN_STD), count, pooled=not per_example)


def _log_normal(x: np.ndarray, fit: GaussianFit) -> np.ndarray:
    return -0.5 * ((x - fit.mean) / fit.std) ** 2 - np.log(fit.std) - 0.5 * math.log(2 * math.pi)


def online_score(phi, unlearned: GaussianFit, never_seen: GaussianFit) -> np.ndarray:
    """Log-likelihood ratio of "unlearned" over "never seen" per example (NaN where a group has no score)."""
    phi = np.asarray(phi, dtype=np.float64)
    return _log_normal(phi, unlearned) - _log_normal(phi, never_seen)


def offline_score(phi, never_seen: GaussianFit) -> np.ndarray:
    """Standard deviations above the "never seen" mean, per example (one-sided: higher = more member-like)."""
    return (np.asarray(phi, dtype=np.float64) - never_seen.mean) / never_seen.std


@dataclass(frozen=True)
class Attack:
    """The fitted attack: scores any model's φ on the audited examples with one variant."""

    variant: str
    unlearned: GaussianFit | None  # None for the offline variant
    never_seen: GaussianFit

    def score(self, phi) -> np.ndarray:
        if self.variant == ONLINE:
            return online_score(phi, self.unlearned, self.never_seen)
        return offline_score(phi, self.never_seen)


def fit_attack(variant: str, scores, unlearned_mask, never_seen_mask,
               per_example_min: int = PER_EXAMPLE_VARIANCE_MIN_SCORES) -> Attack:
    """The attack of `variant` from shadow scores [shadows, examples] and the two group masks."""
    check_variant(variant)
    never_seen = fit_gaussians(scores, never_seen_mask, per_example_min)
    unlearned = fit_gaussians(scores, unlearned_mask, per_example_min) if variant == ONLINE else None
    return Attack(variant, unlearned, never_seen)


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ConfigError(f"U-LiRA variant must be one of {', '.join(VARIANTS)}, not {variant!r}")


# ---- evaluation -----------------------------------------------------------------------------------------------

def auc(positives, negatives) -> float:
    """Area under the ROC curve: the chance a random positive scores above a random negative (ties count ½)."""
    positives, negatives = np.asarray(positives, np.float64), np.asarray(negatives, np.float64)
    ranks = _average_ranks(np.concatenate([positives, negatives]))
    n_pos, n_neg = len(positives), len(negatives)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks (what Mann-Whitney's U needs)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    return (last_rank - (counts - 1) / 2.0)[inverse]


def tpr_at_fpr(positives, negatives, fpr: float) -> float:
    """Fraction of positives above the threshold that lets at most floor(fpr · negatives) negatives above it."""
    negatives = np.sort(np.asarray(negatives, np.float64))[::-1]
    allowed = int(math.floor(fpr * len(negatives) + 1e-9))
    if allowed >= len(negatives):
        return 1.0
    return float(np.mean(np.asarray(positives, np.float64) > negatives[allowed]))


def best_balanced_accuracy(positives, negatives) -> float:
    """½(TPR + TNR) at the best threshold "score above t means unlearned", as the LiRA papers report it: what an
    attacker who knew the best threshold would reach (an upper bound for one who must pick it in advance)."""
    positives, negatives = np.asarray(positives, np.float64), np.asarray(negatives, np.float64)
    scores = np.concatenate([positives, negatives])
    is_positive = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    order = np.argsort(-scores, kind="mergesort")
    ordered = scores[order]
    true_pos, false_pos = np.cumsum(is_positive[order]), np.cumsum(1 - is_positive[order])
    cut = np.r_[ordered[1:] != ordered[:-1], True]  # a threshold can only fall between distinct scores
    accuracy = (true_pos[cut] / len(positives) + 1 - false_pos[cut] / len(negatives)) / 2
    return float(max(0.5, accuracy.max()))  # 0.5: call nothing "unlearned"


def minimum_negatives(fpr: float) -> int:
    """Negatives needed before a TPR at `fpr` means anything: with fewer than 1/fpr, no negative may lie above the
    threshold and the figure is a TPR at an FPR of 0 among few samples, not at `fpr`."""
    check_fpr(fpr)
    return math.ceil(1 / fpr - 1e-9)


def minimum_shadows(fpr: float, candidates: int) -> int:
    """Shadows the leave-one-out shadow trials need for a TPR at `fpr`: each shadow gives about candidates / 2
    never-seen trials (the candidates outside its half), so K ≥ 2 · minimum_negatives(fpr) / candidates, even
    (shadows come in complementary pairs) and at least MIN_SHADOWS."""
    if candidates < 1:
        raise ConfigError("U-LiRA needs at least one audited sample")
    needed = math.ceil(2 * minimum_negatives(fpr) / candidates)
    return max(MIN_SHADOWS, needed + needed % 2)


def check_fpr(fpr: float) -> None:
    if not 0 < fpr < 1:
        raise ConfigError(f"an FPR must lie strictly between 0 and 1, not {fpr}")


def check_even_shadows(shadows: int) -> None:
    if shadows < MIN_SHADOWS or shadows % 2:
        raise ConfigError(f"--shadows must be an even number (shadows come in complementary halves of the pool), at "
                          f"least {MIN_SHADOWS}, not {shadows}")


def check_shadow_count(shadows: int, fprs, candidates: int) -> None:
    """Refuse, before any compute, a K that is odd, below MIN_SHADOWS, or too small for the smallest FPR asked."""
    check_even_shadows(shadows)
    for fpr in sorted(fprs):
        needed = minimum_shadows(fpr, candidates)
        if shadows < needed:
            raise ConfigError(f"--shadows {shadows} is too few for a TPR at {fpr:g} FPR: the shadow trials would hold "
                              f"about {shadows * candidates // 2} never-seen scores and it needs "
                              f"{minimum_negatives(fpr)}; use --shadows {needed} or more (or leave {fpr:g} out of --fpr)")


@dataclass(frozen=True)
class Interval:
    value: float | None
    low: float | None
    high: float | None

    def contains(self, x: float) -> bool:
        return self.low is not None and self.low <= x <= self.high

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high}


def _interval(value: float, resampled: list[float], confidence: float) -> Interval:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return Interval(value, float(low), float(high))


def attack_figures(positives, negatives, fprs=DEFAULT_FPRS, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                   confidence: float = CONFIDENCE) -> dict:
    """AUC, TPR at each FPR and best balanced accuracy of scores of positives vs negatives, each with a
    percentile bootstrap interval (positives and negatives resampled apart, `resamples` times, seeded).

    Scores that are NaN (an example some group had no shadow score for) are left out and counted as `unscored`.
    A TPR at an FPR the negatives cannot resolve (fewer than 1/FPR) is None, with the reason in `notes`.
    """
    positives, negatives = np.asarray(positives, np.float64), np.asarray(negatives, np.float64)
    unscored = int(np.isnan(positives).sum() + np.isnan(negatives).sum())
    positives, negatives = positives[~np.isnan(positives)], negatives[~np.isnan(negatives)]
    if not len(positives) or not len(negatives):
        raise ValueError(f"an attack evaluation needs scored positives and negatives ({len(positives)} and "
                         f"{len(negatives)}, {unscored} unscored)")
    resolvable = [fpr for fpr in fprs if len(negatives) >= minimum_negatives(fpr)]
    rng = np.random.default_rng(seed)
    draws = {"auc": [], "balanced_accuracy": [], **{fpr: [] for fpr in resolvable}}
    for _ in range(resamples):
        pos = positives[rng.integers(0, len(positives), len(positives))]
        neg = negatives[rng.integers(0, len(negatives), len(negatives))]
        draws["auc"].append(auc(pos, neg))
        draws["balanced_accuracy"].append(best_balanced_accuracy(pos, neg))
        for fpr in resolvable:
            draws[fpr].append(tpr_at_fpr(pos, neg, fpr))
    figures = {"auc": _interval(auc(positives, negatives), draws["auc"], confidence).as_dict(),
               "balanced_accuracy": _interval(best_balanced_accuracy(positives, negatives),
                                              draws["balanced_accuracy"], confidence).as_dict(),
               "tpr_at_fpr": {}, "positives": len(positives), "negatives": len(negatives), "unscored": unscored,
               "confidence": confidence, "resamples": resamples, "notes": []}
    for fpr in fprs:
        if fpr in resolvable:
            figures["tpr_at_fpr"][f"{fpr:g}"] = _interval(tpr_at_fpr(positives, negatives, fpr), draws[fpr],
                                                          confidence).as_dict()
        else:
            figures["tpr_at_fpr"][f"{fpr:g}"] = None
            figures["notes"].append(f"TPR at {fpr:g} FPR needs {minimum_negatives(fpr)} negatives, "
                                    f"{len(negatives)} here")
    return figures


# ---- the target, and the shadows as targets ------------------------------------------------------------------

def evaluate_target(attack: Attack, phi, is_positive, is_negative, fprs=DEFAULT_FPRS,
                    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """The attack on one model's φ over the audited examples: `is_positive` (its D_f) vs `is_negative`."""
    scores = attack.score(phi)
    is_positive, is_negative = np.asarray(is_positive, bool), np.asarray(is_negative, bool)
    return attack_figures(scores[is_positive], scores[is_negative], fprs, resamples, seed)


def shadow_trial_scores(scores, unlearned_mask, never_seen_mask,
                        per_example_min: int = PER_EXAMPLE_VARIANCE_MIN_SCORES) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out over unlearned shadows: each shadow in turn is the target, scored by the online attack fitted
    on the others; its "unlearned" examples are positives, its "never seen" ones negatives. Pooled over shadows
    they give K · examples / 2 negatives: enough for a TPR at a low FPR that one target's D_f cannot resolve.
    It measures the method (every shadow ran it), not the one target model."""
    scores = np.asarray(scores, np.float64)
    unlearned_mask, never_seen_mask = np.asarray(unlearned_mask, bool), np.asarray(never_seen_mask, bool)
    positives, negatives = [], []
    for held_out in range(scores.shape[0]):
        others = np.arange(scores.shape[0]) != held_out
        attack = fit_attack(ONLINE, scores, unlearned_mask & others[:, None], never_seen_mask & others[:, None],
                            per_example_min)
        held = attack.score(scores[held_out])
        positives.append(held[unlearned_mask[held_out]])
        negatives.append(held[never_seen_mask[held_out]])
    return np.concatenate(positives), np.concatenate(negatives)


# ---- sanity anchors -------------------------------------------------------------------------------------------

ATTACKABLE_MIN_AUC = 0.6  # the original's AUC must reach this, and its interval lie above 0.5


def original_is_attackable(figures: dict) -> bool:
    """The original model (it trained on D_f) must be clearly attackable: AUC ≥ 0.6 and its interval above 0.5."""
    auc_figure = figures["auc"]
    return auc_figure["value"] >= ATTACKABLE_MIN_AUC and auc_figure["low"] > 0.5


def retrained_is_not_attackable(figures: dict) -> bool:
    """A model retrained without D_f must not be attackable: its AUC interval contains 0.5."""
    auc_figure = figures["auc"]
    return auc_figure["low"] <= 0.5 <= auc_figure["high"]
