"""The acceptance gate of a deletion request: do the requested samples look like samples the model never saw,
neither more nor less member-like, and could the checks have told?

Each forgetting check is a two-sided permutation test of one per-sample figure of the unlearned model: the
requested samples against a reference of samples it never saw (the val split), drawn from pipeline/deletion/
evidence.py:
- `accuracy`: is the model right on them as often as on never-seen samples of the same classes?
- `confidence`: is it as confident in their true labels (its logit margin, ranked within each class) as on
  never-seen samples of the same classes? Too confident means memory left; less confident means the unlearning
  overshot, which marks the samples out just as well (over-unlearning).
- `per_sample`, with a U-LiRA shadow bank (pipeline/runs/shadows.py): each sample's margin, in standard
  deviations from what the bank's shadows that never saw *that sample* give (the offline U-LiRA score), against
  the same score of never-seen samples. The shadows know each sample's own difficulty, so one sample can be
  judged: the only check with power for a 1-id request.
The class-matched tests permute within classes (stratified), so a request concentrated in a few classes is
compared with never-seen samples of those classes only, not with easier or harder classes it does not hold.

Error rates. A model that never saw the samples fails a check with probability at most its level (the permutation
null is exact, up to Monte Carlo error): alpha split evenly over the checks that can reach their share at all
given the request's sizes (a 1-id request cannot be judged against the ~50 never-seen samples of its class), so it
is rejected by a forgetting check with probability at most alpha (Bonferroni). A check has power on a request when it fails the
*input* model, which trained on the samples, at the same level. A request on which no check has power is
`not_verifiable`: the figures cannot show that the samples were forgotten, so it is never accepted. The
unchanged model is therefore never accepted: wherever a check has power, its own p-value fails it.
benchmarks/gate_acceptance.py measures the rates on digits-hard.

Utility: retain accuracy may fall at most `max_acc_drop` below the input model's, test accuracy that plus
`acc_drop_per_share` times the share of the training set the request removes (a model retrained without 300 of
digits-hard's 800 training samples loses up to 0.15 test accuracy: losing data costs accuracy). A utility figure
that could not be measured fails.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.deletion.chain import ACCEPTED, REJECTED
from pipeline.errors import ConfigError
from pipeline.metrics import ulira

NOT_VERIFIABLE = "not_verifiable"
VERDICTS = (ACCEPTED, REJECTED, NOT_VERIFIABLE)
FORGETTING, UTILITY = "forgetting", "utility"
# A forgetting check's outcome: no difference found and power to find one / a difference / no difference, but the
# input model shows none either (the check cannot tell) / not computed (no reference sample of the request's classes).
PASSED, FAILED, NO_POWER, NOT_MEASURED = "passed", "failed", "no_power", "not_measured"


@dataclass(frozen=True)
class GateThresholds:
    """alpha: the chance that a model which never saw the samples is rejected by the forgetting checks (split
    evenly between them); max_acc_drop: how far retain and test accuracy may fall below the input model's, test
    accuracy acc_drop_per_share more per share of the training set removed. Defaults from
    benchmarks/gate_acceptance.py on digits-hard (docs/deletion.md, "Measured")."""

    # 0.02: over 20 requests each of 1, 30 and 300 ids, a model retrained without them was accepted in 19-20 of 20
    # wherever a check had power (0.05: 18 of 20 for 30 ids with a 16-shadow bank), and 13 of 20 one-id requests
    # stayed verifiable with the bank (0.01: none, since digits-hard's 497 never-seen samples cannot resolve it);
    # the unchanged model was never accepted at any of the three.
    alpha: float = 0.02
    max_acc_drop: float = 0.05
    acc_drop_per_share: float = 0.3
    permutations: int = 10_000  # Monte Carlo draws per test: p-values resolved to 1e-4

    def as_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        if not 0 < self.alpha < 1:
            raise ConfigError(f"--alpha must lie strictly between 0 and 1, not {self.alpha}")
        if self.max_acc_drop < 0:
            raise ConfigError(f"--max-acc-drop must be 0 or more, not {self.max_acc_drop}")
        if self.acc_drop_per_share < 0:
            raise ConfigError(f"--acc-drop-per-share must be 0 or more, not {self.acc_drop_per_share}")
        if self.permutations < 1000:
            raise ConfigError(f"the gate needs at least 1000 permutations per test, not {self.permutations}")


@dataclass(frozen=True)
class SampleScores:
    """One model's figures per sample: the logit margin φ = log(p_y / (1 − p_y)) and whether it is right."""

    phi: np.ndarray
    correct: np.ndarray


@dataclass(frozen=True)
class Evidence:
    """Per-sample figures on the request and its never-seen reference, aligned by position."""

    labels: np.ndarray
    is_request: np.ndarray  # the others are the reference (never seen by the input model either)
    before: SampleScores  # the input model
    after: SampleScores  # the unlearned model
    shadow_phi: np.ndarray | None = None  # [K, samples] φ of each shadow of the bank
    shadow_never_seen: np.ndarray | None = None  # [K, samples] whether the shadow's half excludes the sample

    @property
    def has_bank(self) -> bool:
        return self.shadow_phi is not None

    def with_shadows(self, count: int) -> "Evidence":
        """The same evidence with only the bank's first `count` shadows (0: no bank)."""
        if not count:
            return Evidence(self.labels, self.is_request, self.before, self.after)
        return Evidence(self.labels, self.is_request, self.before, self.after, self.shadow_phi[:count],
                        self.shadow_never_seen[:count])


# ---- the permutation test -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TestResult:
    p_value: float | None  # None: nothing to compare (no reference sample in any requested stratum)
    request_mean: float | None  # the figure's mean over the tested request samples
    reference_mean: float | None  # what never-seen samples give: the strata's reference means, weighted as the request
    tested: int  # request samples tested
    reference: int  # reference samples they were compared with
    untested: int  # request samples of a stratum without reference samples (left out)


def _mid_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]


def permutation_test(values, strata, is_request, is_reference, permutations: int, seed: int, rank: bool,
                     shown=None) -> TestResult:
    """Two-sided stratified permutation test of "the request's values are drawn like the reference's".

    Within each stratum holding request samples, the statistic is the sum of the request's values (with `rank`, of
    their mid-ranks in the stratum's pooled values over its size + 1, so each stratum weighs by its samples and
    outliers do not dominate); the null distribution draws, stratum by stratum, as many pooled samples as the
    request has there, without replacement. p = 2 · min(P(T* ≥ T), P(T* ≤ T)), capped at 1, each tail counted
    with the observed T itself ((1 + hits) / (1 + draws)), so p is never 0. The means reported are of `shown`
    (default: the values), the reference's weighted by the request's strata.
    """
    values, strata = np.asarray(values, np.float64), np.asarray(strata)
    shown = values if shown is None else np.asarray(shown, np.float64)
    is_request, is_reference = np.asarray(is_request, bool), np.asarray(is_reference, bool)
    rng = np.random.default_rng(seed)
    observed, null = 0.0, np.zeros(permutations)
    tested = reference = untested = 0
    request_total = reference_expected = 0.0
    for stratum in np.unique(strata[is_request]):
        mine, theirs = is_request & (strata == stratum), is_reference & (strata == stratum)
        n, m = int(mine.sum()), int(theirs.sum())
        if m == 0:
            untested += n
            continue
        pooled = np.concatenate([values[mine], values[theirs]])
        scored = _mid_ranks(pooled) / (n + m + 1) if rank else pooled
        observed += scored[:n].sum()
        null += _draw_sums(scored, n, permutations, rng)
        tested, reference = tested + n, reference + m
        request_total += shown[mine].sum()
        reference_expected += n * shown[theirs].mean()
    if not tested:
        return TestResult(None, None, None, 0, 0, untested)
    tolerance = 1e-9 * max(1.0, abs(observed))  # float sums of equal draws may differ in their last bits
    upper = (1 + np.sum(null >= observed - tolerance)) / (1 + permutations)
    lower = (1 + np.sum(null <= observed + tolerance)) / (1 + permutations)
    return TestResult(float(min(1.0, 2 * min(upper, lower))), request_total / tested, reference_expected / tested,
                      tested, reference, untested)


def _draw_sums(pooled: np.ndarray, n: int, draws: int, rng: np.random.Generator, chunk: int = 2000) -> np.ndarray:
    """Sums of `n` < len(pooled) of `pooled` drawn without replacement, `draws` times (in chunks, to keep
    chunk x pooled random keys in memory)."""
    sums = np.empty(draws)
    for start in range(0, draws, chunk):
        keys = rng.random((min(chunk, draws - start), len(pooled)))
        sums[start:start + len(keys)] = pooled[np.argpartition(keys, n - 1, axis=1)[:, :n]].sum(axis=1)
    return sums


# ---- the checks -----------------------------------------------------------------------------------------------

def confidence_of(phi) -> np.ndarray:
    """p_y from the logit margin φ = log(p_y / (1 − p_y))."""
    return 1.0 / (1.0 + np.exp(-np.asarray(phi, np.float64)))


def never_seen_scores(evidence: Evidence) -> tuple[np.ndarray, np.ndarray]:
    """Offline U-LiRA scores of the input and the unlearned model: each sample's φ in standard deviations from the
    mean of the bank's shadows that never saw it (a variance pooled over the samples: few shadows per sample)."""
    fit = ulira.fit_gaussians(evidence.shadow_phi, evidence.shadow_never_seen)
    return ulira.offline_score(evidence.before.phi, fit), ulira.offline_score(evidence.after.phi, fit)


@dataclass(frozen=True)
class CheckSpec:
    """One forgetting check: its figure for a model and how it is compared."""

    name: str
    meaning: str
    stratified: bool  # compared within classes
    rank: bool  # values ranked within their stratum before summing
    shown: str  # how request_value / reference_value read: "rate" (a fraction) or "score"


ACCURACY = CheckSpec("accuracy", "The model is right on the requested samples as often as on samples of the same "
                     "classes it never saw", stratified=True, rank=False, shown="rate")
CONFIDENCE = CheckSpec("confidence", "The model is as confident in the requested samples' true labels as in those "
                       "of never-seen samples of the same classes, neither more (memory left) nor less (over-"
                       "unlearning)", stratified=True, rank=True, shown="rate")
PER_SAMPLE = CheckSpec("per_sample", "Sample by sample, the model scores the requested samples as the bank's "
                       "reference models that never saw each of them do, neither higher nor lower, as for "
                       "never-seen samples", stratified=False, rank=True, shown="score")


def _figures(evidence: Evidence) -> dict:
    """{check name: (input model's values, unlearned model's values, values shown)} per sample (NaN: no score)."""
    figures = {ACCURACY.name: (evidence.before.correct.astype(float), evidence.after.correct.astype(float), None),
               CONFIDENCE.name: (evidence.before.phi, evidence.after.phi, confidence_of)}
    if evidence.has_bank:
        before, after = never_seen_scores(evidence)
        figures[PER_SAMPLE.name] = (before, after, None)
    return figures


def smallest_p_value(strata, is_request, is_reference, permutations: int) -> float:
    """The smallest p-value a stratified permutation test of these sizes can give, whatever the figures: every
    request sample the most extreme of its stratum, 2 / (the ways to draw them), and no less than Monte Carlo
    resolves. Sizes only: it decides, before any figure is read, whether a check can reach its level at all."""
    log_ways = 0.0
    for stratum in np.unique(strata[is_request]):
        n = int((is_request & (strata == stratum)).sum())
        m = int((is_reference & (strata == stratum)).sum())
        if m:
            log_ways += math.lgamma(n + m + 1) - math.lgamma(n + 1) - math.lgamma(m + 1)
    return max(2 * math.exp(-log_ways), 2 / (permutations + 1)) if log_ways else 1.0


def checks_level(smallest: dict, alpha: float) -> tuple[float, set]:
    """(level, the checks that count): alpha split evenly over the checks that can reach their share at all
    (Bonferroni over a family chosen by the request's sizes alone, so the split stays valid). A 1-id request gives
    the bank's check all of alpha, since the class-matched ones cannot get below 2 / (never-seen samples of the
    class + 1); the checks left out cannot fail the request, and say so."""
    family = list(smallest)
    while family:
        level = alpha / len(family)
        reachable = [name for name in family if smallest[name] <= level]
        if reachable == family:
            return level, set(family)
        family = reachable
    return alpha / len(smallest), set()


def forgetting_checks(evidence: Evidence, thresholds: GateThresholds, seed: int) -> list[dict]:
    """Each forgetting check on the unlearned and on the input model, at the level checks_level gives them."""
    specs = [ACCURACY, CONFIDENCE] + ([PER_SAMPLE] if evidence.has_bank else [])
    figures = _figures(evidence)
    prepared = {}
    for spec in specs:
        before, after, shown = figures[spec.name]
        scored = ~np.isnan(after) & ~np.isnan(before)  # a sample no shadow left out has no U-LiRA score
        strata = evidence.labels if spec.stratified else np.zeros(len(evidence.labels), dtype=np.int64)
        prepared[spec.name] = (before[scored], after[scored], shown, strata[scored], evidence.is_request[scored],
                               int((evidence.is_request & ~scored).sum()))
    level, counted = checks_level({name: smallest_p_value(strata, request, ~request, thresholds.permutations)
                                   for name, (_, _, _, strata, request, _) in prepared.items()}, thresholds.alpha)
    checks = []
    for number, spec in enumerate(specs):
        before, after, shown, strata, request, unscored = prepared[spec.name]

        def test(values, salt: int) -> TestResult:
            return permutation_test(values, strata, request, ~request, thresholds.permutations, seed + salt,
                                    spec.rank, shown=shown(values) if shown else None)

        # The same draws for both models (same seed): their p-values differ by their figures alone.
        checks.append(_forgetting_check(spec, test(after, number), test(before, number),
                                        level if spec.name in counted else None, unscored))
    return checks


def _forgetting_check(spec: CheckSpec, after: TestResult, before: TestResult, level: float | None,
                      unscored: int) -> dict:
    """The check's record entry; `level` None: it cannot reach its share of alpha on a request this small, so it
    neither fails the request nor has power."""
    if after.p_value is None or before.p_value is None:
        outcome = NOT_MEASURED
    elif level is None:
        outcome = NO_POWER
    elif after.p_value < level:
        outcome = FAILED
    else:
        outcome = PASSED if before.p_value < level else NO_POWER
    has_power = level is not None and before.p_value is not None and before.p_value < level
    return {"check": spec.name, "kind": FORGETTING, "meaning": spec.meaning, "measured": after.p_value,
            "limit": level, "direction": "at least", "passed": outcome == PASSED, "outcome": outcome,
            "p_value": after.p_value, "input_p_value": before.p_value, "has_power": has_power, "shown": spec.shown,
            "request_value": after.request_mean, "reference_value": after.reference_mean,
            "input_request_value": before.request_mean, "input_reference_value": before.reference_mean,
            "samples": after.tested, "reference_samples": after.reference, "untested": after.untested + unscored}


def utility_checks(before: dict, after: dict, thresholds: GateThresholds, removed_share: float) -> list[dict]:
    """Retain accuracy at most `max_acc_drop` below the input model's, test accuracy at most that plus
    `acc_drop_per_share` x `removed_share` (the request's share of the training set) below (Ray evaluation)."""
    test_drop = thresholds.max_acc_drop + thresholds.acc_drop_per_share * removed_share
    checks = []
    for split, words, drop in (("retain", "the samples it keeps", thresholds.max_acc_drop),
                               ("test", "held-out test samples", test_drop)):
        key = f"acc_{split}"
        measured, reference = after.get(key), before.get(key)
        limit = None if reference is None else reference - drop
        passed = measured is not None and limit is not None and measured >= limit
        why = (f" ({thresholds.max_acc_drop:g}, plus {thresholds.acc_drop_per_share:g} x the {removed_share:.1%} of "
               "the training set the request removes)" if split == "test" and removed_share else "")
        checks.append({"check": key, "kind": UTILITY, "meaning": f"The model still classifies {words} as well as "
                       f"before, within {drop:.3g}{why}", "measured": measured, "limit": limit,
                       "direction": "at least", "passed": passed, "outcome": PASSED if passed else FAILED,
                       "input_value": reference})
    return checks


def gate_checks(evidence: Evidence, before: dict, after: dict, thresholds: GateThresholds, seed: int,
                removed_share: float) -> list[dict]:
    """Every check of a request: the forgetting checks on `evidence`, then the utility checks on the input and the
    unlearned model's Ray-evaluation metrics `before` / `after`; `removed_share`: the request's share of the
    training set."""
    return forgetting_checks(evidence, thresholds, seed) + utility_checks(before, after, thresholds, removed_share)


def verdict_of(checks: list[dict]) -> str:
    """Rejected on any failed check; else accepted when a forgetting check had power, else not verifiable."""
    if not checks or any(check["outcome"] == FAILED for check in checks):
        return REJECTED
    if any(check["kind"] == FORGETTING and check["outcome"] == PASSED for check in checks):
        return ACCEPTED
    return NOT_VERIFIABLE


def failed_checks(checks: list[dict]) -> list[str]:
    """A line per failed check, for the record's reason and the console."""
    def shown(value):
        return "not measured" if value is None else f"{value:.4g}"

    lines = []
    for c in checks:
        if c["outcome"] != FAILED:
            continue
        if c["kind"] == FORGETTING:
            lines.append(f"{c['check']} differs from never-seen samples: {shown(c['request_value'])} on the request vs "
                         f"{shown(c['reference_value'])} (p = {shown(c['p_value'])} < {shown(c['limit'])})")
        else:
            lines.append(f"{c['check']} {shown(c['measured'])} (must be {c['direction']} {shown(c['limit'])})")
    return lines


def unverifiable_reason(checks: list[dict]) -> str:
    """Why a request with no failed check is not verifiable, in one line."""
    def why(check: dict) -> str:
        if check["input_p_value"] is None:
            return f"{check['check']}: not measured"
        if check["limit"] is None:
            return f"{check['check']}: cannot reach its share of alpha on {check['samples']} sample(s)"
        return f"{check['check']}: the input model's p = {check['input_p_value']:.3g}, below {check['limit']:.3g} needed"

    named = "; ".join(why(c) for c in checks if c["kind"] == FORGETTING)
    return ("no forgetting check can tell a model that trained on these samples from one that never saw them: the "
            f"input model, which trained on them, passes as well ({named})")
