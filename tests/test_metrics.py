"""Metrics: JS against scipy, RF-JSD, JSD, MIA, Avg Gap, batch-size invariance (2 workers: test_metrics_workers.py)."""

import copy
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_kl
from torch import nn

from pipeline.data.sources import TensorSource
from pipeline.metrics import (avg_gap, evaluate, js_divergence, kl_divergence, mia_member_rate, retrain_free_jsd,
                              summarize)
from tests.conftest import CPU
from tests.test_metrics_workers import (TINY_SPLIT_SIZES, TinyClassifier, assert_same_metrics, random_source,
                                       tiny_setup)

LN2 = math.log(2.0)
SPLITS = ("forget", "retain", "test", "unseen")


# --- helpers -------------------------------------------------------------------------------------------------------

def random_distributions(rows: int, classes: int, seed: int, zero_fraction: float = 0.3) -> torch.Tensor:
    """Rows on the simplex with about `zero_fraction` exact zeros (each row keeps at least one mass)."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.rand(rows, classes, generator=generator, dtype=torch.float64)
    weights[torch.rand(rows, classes, generator=generator) < zero_fraction] = 0.0
    weights[torch.arange(rows), torch.randint(classes, (rows,), generator=generator)] += 0.1
    return weights / weights.sum(dim=1, keepdim=True)


def scipy_js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """JS divergence computed independently: scipy's JS *distance* (natural base) squared, row by row."""
    return np.array([jensenshannon(a, b, base=math.e) ** 2 for a, b in zip(p, q)])


@pytest.fixture
def one_torch_thread():
    """Small batches on a busy 2-core machine spend most of their time in thread hand-offs; one thread avoids it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def perturbed(model: nn.Module, seed: int, scale: float) -> nn.Module:
    """A copy with Gaussian noise of `scale` x each parameter's spread: a different but related model."""
    copied = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in copied.parameters():
            spread = parameter.std() if parameter.numel() > 1 else parameter.abs()
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale * spread)
    return copied


def first(source: TensorSource, count: int) -> TensorSource:
    return source.subset(np.arange(len(source)) < count)


# --- divergences ---------------------------------------------------------------------------------------------------

def test_kl_matches_scipy_in_the_forward_direction():
    p, q = random_distributions(50, 7, seed=0, zero_fraction=0.3), random_distributions(50, 7, seed=1, zero_fraction=0)
    expected = np.array([scipy_kl(a, b) for a, b in zip(p.numpy(), q.numpy())])
    np.testing.assert_allclose(kl_divergence(p, q).numpy(), expected, rtol=1e-12, atol=1e-14)


def test_js_matches_scipy_on_distributions_with_zeros():
    p, q = random_distributions(200, 10, seed=2), random_distributions(200, 10, seed=3)
    assert (p == 0).any() and (q == 0).any()
    np.testing.assert_allclose(js_divergence(p, q).numpy(), scipy_js(p.numpy(), q.numpy()), rtol=1e-9, atol=1e-12)


def test_js_is_symmetric_and_between_zero_and_ln2():
    p, q = random_distributions(300, 6, seed=4, zero_fraction=0.5), random_distributions(300, 6, seed=5)
    forward, backward = js_divergence(p, q), js_divergence(q, p)
    torch.testing.assert_close(forward, backward, rtol=0, atol=1e-15)
    assert (forward >= 0).all() and (forward <= LN2).all()


def test_js_is_zero_for_identical_and_ln2_for_disjoint_supports():
    p = random_distributions(20, 8, seed=6)
    assert js_divergence(p, p).abs().max().item() == 0.0
    left = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    right = torch.tensor([[0.0, 0.0, 0.2, 0.8], [0.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(js_divergence(left, right), torch.full((2,), LN2, dtype=torch.float64))


# --- RF-JSD --------------------------------------------------------------------------------------------------------

def test_rf_jsd_grows_monotonically_as_class_mean_moves_toward_one_hot():
    classes = 4
    reference = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    one_hot = torch.eye(classes, dtype=torch.float64)[3]
    unseen_sums, unseen_counts = torch.zeros(classes, classes, dtype=torch.float64), torch.zeros(classes)
    unseen_sums[2], unseen_counts[2] = 5 * reference, 5  # sums of 5 samples averaging to `reference`
    values = []
    for step in torch.linspace(0, 1, 11, dtype=torch.float64):
        forget_sums, forget_counts = torch.zeros(classes, classes, dtype=torch.float64), torch.zeros(classes)
        forget_sums[2], forget_counts[2] = 2 * ((1 - step) * reference + step * one_hot), 2
        result = retrain_free_jsd(forget_sums, forget_counts, unseen_sums, unseen_counts)
        assert result.classes == [2]
        values.append(result.value)
    assert values[0] == pytest.approx(0.0, abs=1e-15)
    assert all(later > earlier for earlier, later in zip(values, values[1:])), values
    assert values[-1] == pytest.approx(scipy_js(reference[None].numpy(), one_hot[None].numpy())[0])


def test_rf_jsd_is_zero_when_unlearned_is_the_original_on_the_same_images():
    model = TinyClassifier(5, seed=7)
    images = random_source(90, 5, seed=8, prefix="x")
    result = evaluate({"unlearned": model, "original": copy.deepcopy(model)}, {"forget": images, "unseen": images},
                      CPU, num_classes=5, batch_size=32)
    summary = summarize(result, seed=0)
    assert summary["rf_jsd_classes"] == [0, 1, 2, 3, 4]
    assert summary["rf_jsd"] == pytest.approx(0.0, abs=1e-12)


def class_mean_probabilities(model: nn.Module, source: TensorSource, label: int) -> np.ndarray:
    """P_c computed directly, without the metric code: the mean softmax over the source's samples of class c."""
    with torch.no_grad():
        probabilities = torch.softmax(model(source.images[source.labels == label]).double(), dim=1)
    return probabilities.mean(dim=0).numpy()


def test_rf_jsd_averages_over_exactly_the_classes_in_the_forget_set():
    unlearned, original = TinyClassifier(5, seed=9), TinyClassifier(5, seed=10)
    pool = random_source(200, 5, seed=11, prefix="f")
    forget = pool.subset(np.isin(pool.labels.numpy(), [1, 3, 4]))
    unseen = random_source(150, 5, seed=12, prefix="u")
    summary = summarize(evaluate({"unlearned": unlearned, "original": original},
                                 {"forget": forget, "unseen": unseen}, CPU, 5, batch_size=17), seed=0)
    expected = np.mean([scipy_js(class_mean_probabilities(unlearned, forget, c)[None],
                                 class_mean_probabilities(original, unseen, c)[None])[0] for c in (1, 3, 4)])
    assert summary["rf_jsd_classes"] == [1, 3, 4] and summary["rf_jsd_excluded_classes"] == []
    assert summary["rf_jsd"] == pytest.approx(expected, rel=1e-9)
    assert summary["rf_jsd_e4"] == pytest.approx(expected * 1e4, rel=1e-9)


def test_rf_jsd_excludes_and_reports_a_forget_class_without_unseen_samples():
    unlearned, original = TinyClassifier(5, seed=13), TinyClassifier(5, seed=14)
    pool = random_source(200, 5, seed=15, prefix="f")
    forget = pool.subset(np.isin(pool.labels.numpy(), [1, 3, 4]))
    unseen_pool = random_source(150, 5, seed=16, prefix="u")
    unseen = unseen_pool.subset(unseen_pool.labels.numpy() != 3)
    summary = summarize(evaluate({"unlearned": unlearned, "original": original},
                                 {"forget": forget, "unseen": unseen}, CPU, 5), seed=0)
    expected = np.mean([scipy_js(class_mean_probabilities(unlearned, forget, c)[None],
                                 class_mean_probabilities(original, unseen, c)[None])[0] for c in (1, 4)])
    assert summary["rf_jsd_classes"] == [1, 4] and summary["rf_jsd_excluded_classes"] == [3]
    assert summary["rf_jsd"] == pytest.approx(expected, rel=1e-9)


# --- JSD -----------------------------------------------------------------------------------------------------------

def test_jsd_is_the_per_sample_mean_and_does_not_depend_on_forget_set_size():
    unlearned, gold = TinyClassifier(5, seed=17), TinyClassifier(5, seed=18)
    forget = random_source(45, 5, seed=19, prefix="f")
    doubled = TensorSource(torch.cat([forget.images, forget.images]), torch.cat([forget.labels, forget.labels]),
                           list(forget.sample_ids) + [f"{i}-again" for i in forget.sample_ids])
    jsd = {}
    for name, source in (("once", forget), ("twice", doubled)):
        result = evaluate({"unlearned": unlearned, "gold": gold}, {"forget": source}, CPU, 5, batch_size=8)
        jsd[name] = summarize(result, seed=0)["jsd"]
    with torch.no_grad():
        p_unlearned = torch.softmax(unlearned(forget.images).double(), dim=1).numpy()
        p_gold = torch.softmax(gold(forget.images).double(), dim=1).numpy()
    assert jsd["once"] == pytest.approx(scipy_js(p_unlearned, p_gold).mean(), rel=1e-9)
    # A sum instead of a mean would double it; the copies share batches with other samples than the originals do,
    # and float32 logits change in their last bits with the batch (the kernel depends on its shape).
    assert jsd["twice"] == pytest.approx(jsd["once"], rel=1e-6)
    assert 0.01 < jsd["once"] < LN2  # the two models really differ, so the equality above says something


# --- MIA and Avg Gap -----------------------------------------------------------------------------------------------

def test_mia_separates_low_from_high_entropy_and_is_seeded():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.uniform(0.0, 0.2, 300), rng.uniform(1.0, 1.5, 120)
    assert mia_member_rate(members, nonmembers, rng.uniform(0.0, 0.2, 50), seed=1) == 1.0
    assert mia_member_rate(members, nonmembers, rng.uniform(1.0, 1.5, 50), seed=1) == 0.0
    overlapping_members, targets = rng.uniform(0.0, 1.2, 300), rng.uniform(0.0, 1.5, 200)
    rates = [mia_member_rate(overlapping_members, nonmembers, targets, seed=seed, max_per_class=40)
             for seed in (3, 3, 4)]
    assert rates[0] == rates[1]
    assert 0.0 < rates[0] < 1.0


def test_mia_calls_memorised_samples_members_more_often_than_held_out_ones(digits_hard, original_model,
                                                                          one_torch_thread):
    """The digits-hard original memorises its training set: D_r and D_f look like members, D_test and D_u do not."""
    sources, _ = digits_hard
    subsets = {"forget": sources["forget"], "retain": first(sources["retain"], 240),
               "test": first(sources["test"], 240), "unseen": first(sources["unseen"], 160)}
    result = evaluate({"unlearned": original_model}, subsets, CPU, num_classes=10)
    entropies = {split: result.stats("unlearned", split).entropies for split in SPLITS}
    rate = {split: mia_member_rate(entropies["retain"], entropies["test"], entropies[split], seed=0)
            for split in SPLITS}
    assert rate["retain"] >= rate["test"] + 0.5, rate
    assert rate["forget"] >= rate["unseen"] + 0.5, rate  # neither was used to fit the attack
    summary = summarize(result, seed=0)
    assert summary["mia"] == rate["forget"] and summary["mia_unseen"] == rate["unseen"]


def test_per_class_forget_accuracy_covers_the_classes_of_d_f_and_averages_to_acc_forget():
    models, sources = tiny_setup()
    summary = summarize(evaluate(models, sources, CPU, 5), seed=0)
    labels = sources["forget"].labels
    assert summary["forget_classes"] == sorted(set(labels.tolist()))
    counts = [int((labels == c).sum()) for c in summary["forget_classes"]]
    weighted = sum(a * n for a, n in zip(summary["acc_forget_per_class"], counts)) / sum(counts)
    assert weighted == pytest.approx(summary["acc_forget"])


def test_confidence_is_the_mean_probability_of_the_true_class():
    models, sources = tiny_setup()
    summary = summarize(evaluate(models, sources, CPU, 5), seed=0)
    for split, source in sources.items():
        with torch.no_grad():
            probs = torch.softmax(models["unlearned"](source.images).double(), dim=1)
        expected = probs[torch.arange(len(source)), source.labels.long()].mean().item()
        assert summary[f"confidence_{split}"] == pytest.approx(expected, rel=1e-9), split


def test_avg_gap_on_hand_made_numbers():
    unlearned = {"acc_forget": 0.90, "acc_retain": 1.00, "acc_test": 0.70, "mia": 0.80, "acc_unseen": 0.1}
    gold = {"acc_forget": 0.70, "acc_retain": 0.95, "acc_test": 0.72, "mia": 0.50, "acc_unseen": 0.9}
    assert avg_gap(unlearned, gold) == pytest.approx((0.20 + 0.05 + 0.02 + 0.30) / 4)
    assert avg_gap(gold, unlearned) == pytest.approx(avg_gap(unlearned, gold))
    assert avg_gap(gold, gold) == 0.0


def test_summary_without_gold_has_no_jsd_and_no_avg_gap():
    models, sources = tiny_setup()
    del models["gold"]
    summary = summarize(evaluate(models, sources, CPU, 5), seed=0)
    assert summary["gold"] is False
    assert summary["jsd"] is None and summary["jsd_e4"] is None and summary["avg_gap"] is None
    assert "gold_metrics" not in summary
    assert summary["rf_jsd"] is not None and summary["mia"] is not None
    assert summary["split_sizes"] == {name: len(source) for name, source in sources.items()}


def test_summary_with_gold_reports_avg_gap_of_the_gold_row():
    models, sources = tiny_setup()
    summary = summarize(evaluate(models, sources, CPU, 5), seed=0)
    assert summary["gold"] is True and set(summary["gold_metrics"]) == (
        {f"{kind}_{s}" for s in SPLITS for kind in ("acc", "confidence")}
        | {"mia", "mia_unseen", "forget_classes", "acc_forget_per_class"})
    assert summary["avg_gap"] == pytest.approx(avg_gap(summary, summary["gold_metrics"]))
    assert summary["avg_gap"] > 0


def test_reused_reference_statistics_give_the_same_metrics_without_running_those_models_again():
    models, sources = tiny_setup()
    first_result = evaluate(models, sources, CPU, 5)
    reference = {key: stats for key, stats in first_result.split_stats.items() if key[0] in ("original", "gold")}
    calls = {name: 0 for name in models}
    for name, model in models.items():
        model.register_forward_hook(lambda module, args, out, name=name: calls.__setitem__(name, calls[name] + 1))
    again = evaluate(models, sources, CPU, 5, batch_size=16, reuse=reference)
    assert_same_metrics(summarize(again, seed=0), summarize(first_result, seed=0), tolerance=1e-12)
    # The original ran only on D_u, now reused; the gold model runs only on D_f (per-sample JSD needs its logits).
    forget_batches = -(-TINY_SPLIT_SIZES["forget"] // 16)
    assert calls["original"] == 0 and calls["gold"] == forget_batches and calls["unlearned"] > forget_batches


# --- invariance ----------------------------------------------------------------------------------------------------

def test_every_metric_is_the_same_with_batch_size_7_and_256(digits_hard, original_model, one_torch_thread):
    sources, _ = digits_hard
    subsets = {"forget": sources["forget"], "retain": first(sources["retain"], 100),
               "test": first(sources["test"], 100), "unseen": first(sources["unseen"], 100)}
    models = {"unlearned": perturbed(original_model, seed=1, scale=0.05), "original": original_model,
              "gold": perturbed(original_model, seed=2, scale=0.3)}
    small, large = (summarize(evaluate(models, subsets, CPU, 10, batch_size=size), seed=0) for size in (7, 256))
    assert_same_metrics(small, large)
    assert small["jsd"] > 0 and small["rf_jsd"] > 0 and small["gold"] is True
