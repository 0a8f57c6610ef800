"""U-LiRA's maths on synthetic scores whose answer is known (pipeline/metrics/ulira.py): no torch, no Ray."""

import itertools
import math

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.metrics.ulira import (MIN_SHADOWS, OFFLINE, ONLINE, attack_figures, auc, best_balanced_accuracy,
                                    check_shadow_count, evaluate_target, fit_attack, fit_gaussians, logit_margin,
                                    minimum_negatives, minimum_shadows, original_is_attackable,
                                    retrained_is_not_attackable, shadow_trial_scores, tpr_at_fpr)

EXAMPLES = 200


# ---- the score --------------------------------------------------------------------------------------------------

def test_logit_margin_is_the_log_odds_of_the_true_class():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(0, 3, (50, 7)), rng.integers(0, 7, 50)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    p_true = p[np.arange(50), labels]
    np.testing.assert_allclose(logit_margin(logits, labels), np.log(p_true / (1 - p_true)), rtol=1e-9)


def test_logit_margin_stays_finite_where_the_probability_rounds_to_one():
    margin = logit_margin([[1000.0, 0.0, -5.0], [-800.0, 0.0, 900.0]], [0, 0])
    np.testing.assert_allclose(margin, [1000.0 - np.log(1 + np.exp(-5.0)), -800.0 - 900.0 - np.log1p(np.exp(-900.0))])
    assert np.isfinite(margin).all()
    np.testing.assert_allclose(logit_margin([[2.0, -1.0]], [1]), [-3.0])  # two classes: the logit difference


# ---- Gaussians ------------------------------------------------------------------------------------------------

def test_pooled_variance_is_the_within_example_spread():
    scores = np.array([[1.0, 10.0, 5.0], [3.0, 14.0, np.nan], [np.nan, np.nan, 7.0]])
    member = np.array([[True, True, True], [True, True, False], [False, False, True]])
    fit = fit_gaussians(scores, member)
    np.testing.assert_allclose(fit.mean, [2.0, 12.0, 6.0])
    # Squared deviations 1+1, 4+4, 1+1 over 1+1+1 degrees of freedom: the NaNs outside the mask never enter.
    np.testing.assert_allclose(fit.std, np.sqrt(12.0 / 3))
    assert fit.pooled and list(fit.count) == [2, 2, 2]


def test_per_example_variances_when_every_example_has_enough_scores():
    rng = np.random.default_rng(1)
    spreads = np.array([0.5, 2.0, 5.0])
    scores = rng.normal(0, 1, (400, 3)) * spreads
    fit = fit_gaussians(scores, np.ones_like(scores, dtype=bool), per_example_min=32)
    assert not fit.pooled
    np.testing.assert_allclose(fit.std, spreads, rtol=0.1)


def test_an_example_without_scores_has_no_fit_and_one_score_each_is_refused():
    fit = fit_gaussians(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[True, False], [True, False]]))
    assert math.isnan(fit.mean[1]) and fit.count[1] == 0
    with pytest.raises(ValueError, match="two scores"):
        fit_gaussians(np.ones((2, 3)), np.eye(2, 3, dtype=bool))


# ---- synthetic shadows ----------------------------------------------------------------------------------------

def synthetic_bank(shift: float, shadows: int = 16, seed: int = 0, spread_of_baselines: float = 4.0):
    """Shadow scores where each example has its own baseline (how hard it is): "never seen" ~ N(base, 1),
    "unlearned" ~ N(base + shift, 1). Each example is never seen in half the shadows (pairs), unlearned in the rest."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, spread_of_baselines, EXAMPLES)
    halves = rng.random((shadows // 2, EXAMPLES)) < 0.5
    never_seen = np.repeat(halves, 2, axis=0)
    never_seen[1::2] = ~never_seen[1::2]
    unlearned = ~never_seen
    scores = base + rng.normal(0, 1, (shadows, EXAMPLES)) + shift * unlearned
    return base, scores, unlearned, never_seen


def target_scores(base, shift, positives, seed):
    """A target model's φ: positives (its D_f) carry `shift`, negatives (never seen) none."""
    return base + np.random.default_rng(seed).normal(0, 1, len(base)) + shift * positives


POSITIVES = np.arange(EXAMPLES) < EXAMPLES // 2


@pytest.mark.parametrize("variant", [ONLINE, OFFLINE])
def test_separable_scores_give_an_auc_near_one(variant):
    base, scores, unlearned, never_seen = synthetic_bank(shift=4.0)
    attack = fit_attack(variant, scores, unlearned, never_seen)
    figures = evaluate_target(attack, target_scores(base, 4.0, POSITIVES, seed=7), POSITIVES, ~POSITIVES,
                              fprs=(0.01,), resamples=300)
    assert figures["auc"]["value"] > 0.97 and figures["auc"]["low"] > 0.9
    assert figures["balanced_accuracy"]["value"] > 0.9
    assert original_is_attackable(figures) and not retrained_is_not_attackable(figures)


@pytest.mark.parametrize("variant", [ONLINE, OFFLINE])
def test_identical_scores_give_an_interval_containing_one_half(variant):
    base, scores, unlearned, never_seen = synthetic_bank(shift=0.0)
    attack = fit_attack(variant, scores, unlearned, never_seen)
    figures = evaluate_target(attack, target_scores(base, 0.0, POSITIVES, seed=7), POSITIVES, ~POSITIVES,
                              fprs=(0.01,), resamples=300)
    assert figures["auc"]["low"] < 0.5 < figures["auc"]["high"]
    assert retrained_is_not_attackable(figures) and not original_is_attackable(figures)


def test_per_example_fits_see_what_one_global_threshold_misses():
    """Baselines spread far wider than the shift: φ alone barely separates, the per-example ratio does."""
    base, scores, unlearned, never_seen = synthetic_bank(shift=2.0, shadows=32, spread_of_baselines=6.0)
    phi = target_scores(base, 2.0, POSITIVES, seed=3)
    global_threshold = auc(phi[POSITIVES], phi[~POSITIVES])
    per_example = evaluate_target(fit_attack(ONLINE, scores, unlearned, never_seen), phi, POSITIVES, ~POSITIVES,
                                  fprs=(0.01,), resamples=200)["auc"]["value"]
    # Known means would give Φ(2 / √2) = 0.92; φ alone Φ(2 / √(2 · 37)) = 0.59.
    assert global_threshold < 0.65 and per_example > 0.85


def test_over_unlearning_shows_online_and_reads_as_forgotten_offline():
    """Forgotten samples that score *below* never-seen data: the two-sided online ratio flags them, the one-sided
    offline score calls them less member-like than never-seen ones (AUC below ½)."""
    base, scores, unlearned, never_seen = synthetic_bank(shift=-3.0)
    phi = target_scores(base, -3.0, POSITIVES, seed=5)
    online = evaluate_target(fit_attack(ONLINE, scores, unlearned, never_seen), phi, POSITIVES, ~POSITIVES,
                             fprs=(0.01,), resamples=200)
    offline = evaluate_target(fit_attack(OFFLINE, scores, unlearned, never_seen), phi, POSITIVES, ~POSITIVES,
                              fprs=(0.01,), resamples=200)
    assert online["auc"]["value"] > 0.95 and offline["auc"]["value"] < 0.1


# ---- evaluation -----------------------------------------------------------------------------------------------

def test_auc_counts_pairs_with_ties_as_half():
    rng = np.random.default_rng(2)
    pos, neg = rng.integers(0, 5, 30).astype(float), rng.integers(0, 5, 40).astype(float)
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
    assert auc(pos, neg) == pytest.approx(np.mean(pairs))


def test_tpr_at_fpr_lets_the_allowed_share_of_negatives_above_the_threshold():
    negatives = np.arange(100.0)  # 0..99
    positives = np.array([99.5, 98.5, 97.5, 50.0])
    assert tpr_at_fpr(positives, negatives, 0.01) == 0.5  # one negative (99) may be above: threshold 98
    assert tpr_at_fpr(positives, negatives, 0.001) == 0.25  # none may be: threshold 99
    assert tpr_at_fpr(positives, negatives, 0.03) == 0.75


def test_best_balanced_accuracy():
    assert best_balanced_accuracy([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert best_balanced_accuracy([1.0, 2.0], [3.0, 4.0]) == 0.5  # calling nothing "unlearned" is always possible
    assert best_balanced_accuracy([1.0, 3.0], [2.0, 0.0]) == 0.75


def test_figures_are_seeded_and_unresolvable_fprs_say_why():
    rng = np.random.default_rng(4)
    pos, neg = rng.normal(1, 1, 80), rng.normal(0, 1, 80)
    first = attack_figures(pos, neg, fprs=(0.01, 0.001), resamples=200, seed=3)
    assert first == attack_figures(pos, neg, fprs=(0.01, 0.001), resamples=200, seed=3)
    assert first["tpr_at_fpr"] == {"0.01": None, "0.001": None}  # 80 negatives resolve neither
    assert any("needs 100 negatives, 80 here" in note for note in first["notes"])
    resolved = attack_figures(pos, rng.normal(0, 1, 150), fprs=(0.01,), resamples=200)
    interval = resolved["tpr_at_fpr"]["0.01"]
    assert interval["low"] <= interval["value"] <= interval["high"]
    with_nan = attack_figures(np.r_[pos, np.nan], neg, fprs=(0.01,), resamples=50)
    assert with_nan["unscored"] == 1 and with_nan["positives"] == 80


def test_minimum_shadows_and_negatives_for_an_fpr():
    assert minimum_negatives(0.01) == 100 and minimum_negatives(0.001) == 1000
    assert minimum_shadows(0.01, 160) == MIN_SHADOWS  # 4 shadows already give 320 never-seen trials
    assert minimum_shadows(0.001, 160) == 14  # 2 · 1000 / 160 = 12.5 → 13 → even
    check_shadow_count(14, (0.01, 0.001), 160)
    with pytest.raises(ConfigError, match="use --shadows 14 or more"):
        check_shadow_count(8, (0.01, 0.001), 160)
    for bad in (3, 2, 7):
        with pytest.raises(ConfigError, match="even number"):
            check_shadow_count(bad, (0.01,), 160)


def test_shadow_trials_measure_the_method():
    for shift, expect_attackable in ((3.0, True), (0.0, False)):
        _, scores, unlearned, never_seen = synthetic_bank(shift=shift, shadows=10)
        positives, negatives = shadow_trial_scores(scores, unlearned, never_seen)
        assert len(negatives) == never_seen.sum()  # every never-seen (example, shadow) pair is a trial
        figures = attack_figures(positives, negatives, fprs=(0.001,), resamples=200)
        assert figures["tpr_at_fpr"]["0.001"] is not None  # 10 x 200 / 2 never-seen trials resolve 0.1 %
        assert original_is_attackable(figures) == expect_attackable
        assert retrained_is_not_attackable(figures) == (not expect_attackable)
