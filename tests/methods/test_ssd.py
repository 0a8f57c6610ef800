"""SSD: only the parameters whose forget-set Fisher exceeds alpha x the training-set Fisher change (its defaults at
three forget settings: test_defaults.py)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from pipeline.methods.accuracy import accuracy
from tests.conftest import CPU, FORGET_CLASS
from tests.methods.helpers import run_method


pytestmark = pytest.mark.usefixtures("single_thread")  # per-sample backward passes (tests/methods/conftest.py)


def per_sample_fisher(model, source, parameter_names):
    """Mean over samples of the squared per-sample CE gradient, one backward pass per sample (eval mode)."""
    model.eval()
    parameters = dict(model.named_parameters())
    sums = {name: torch.zeros_like(parameters[name]) for name in parameter_names}
    count = 0
    for batch in source.batches(1):
        model.zero_grad()
        F.cross_entropy(model(batch["image"]), batch["label"]).backward()
        for name in parameter_names:
            sums[name] += parameters[name].grad.pow(2)
        count += 1
    return {name: total / count for name, total in sums.items()}


def test_ssd_dampens_exactly_the_selected_parameters(digits_hard_class, original_model):
    sources = digits_hard_class
    original = copy.deepcopy(original_model)
    method, report = run_method("ssd", original_model, sources, forget_classes=(FORGET_CLASS,))
    alpha, dampening = method.config["alpha"], method.config["lambda"]

    # The Fisher the method used is the per-sample one, recomputed here independently for the head.
    head = ["backbone.head.weight", "backbone.head.bias"]
    expected_forget = per_sample_fisher(copy.deepcopy(original), sources["forget"], head)
    for name in head:
        torch.testing.assert_close(method.forget_importance[name], expected_forget[name], rtol=1e-4, atol=1e-12)

    before, after = dict(original.named_parameters()), dict(original_model.named_parameters())
    selected_total = 0
    for name, selected in method.selected.items():
        forget, train = method.forget_importance[name], method.train_importance[name]
        assert torch.equal(selected, forget > alpha * train), name
        assert torch.equal(after[name][~selected], before[name][~selected]), f"{name}: an unselected weight moved"
        factor = (dampening * train[selected] / forget[selected]).clamp(max=1.0)
        torch.testing.assert_close(after[name][selected], before[name][selected] * factor)
        selected_total += int(selected.sum())
    total = sum(p.numel() for p in original.parameters())
    # Selective: some weights, far from all (0.02-13 % for class 3 on seven originals at the defaults).
    # BatchNorm's running statistics are buffers, not parameters: the refresh after dampening moves them.
    assert 0 < selected_total < 0.2 * total, f"{selected_total} of {total} selected"
    assert report.history[0]["selected"] == selected_total


def test_ssd_statistics_refresh_alone_forgets_nothing(digits_hard_class, original_model):
    # The forgetting above comes from the dampening: with alpha so high that nothing is selected, the refresh of
    # BatchNorm's statistics on D_r that follows leaves the class as well known as before (1.00 on all seven
    # originals, test -0.03..+0.02).
    forget_before = accuracy(original_model, digits_hard_class["forget"], CPU)
    _, report = run_method("ssd", original_model, digits_hard_class, config={"alpha": 1e9},
                           forget_classes=(FORGET_CLASS,))
    assert report.history[0]["selected"] == 0
    assert accuracy(original_model, digits_hard_class["forget"], CPU) == forget_before


# What SSD does not do, recorded rather than hidden (sweeps on five to seven originals):
# - a random 10 %: at the defaults no forget prediction changes (test -0.01..+0.03). alpha 1.5, lambda 0.1 forgets
#   0-21 % of D_f at test -0.06..-0.32 (without the refresh 1-69 % at -0.10..-0.56); alpha 1.3, lambda 1: 0-9 %
#   at -0.01..-0.16.
# - the paper's class setting (alpha 10, lambda 1, squared mini-batch gradients on batches of 64) selects 40-60 %
#   of the weights and collapses the model, refresh or not (test -0.57..-0.70); alpha 100 / 200 / 300 with the
#   refresh: test -0.02..-0.12 on three originals at 100, the class left whole on two of five at 200 and 300.
# - without the statistics refresh the defaults cost test -0.53..+0.03 for class 3.
