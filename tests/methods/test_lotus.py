"""LoTUS: the temperature rule, the targets, the retain subset, class mode, BatchNorm refresh, its history and early stop."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data.sources import TensorSource
from pipeline.methods import create_method
from pipeline.methods.accuracy import accuracy
from pipeline.methods.base import UnlearnData
from pipeline.methods.harness import retain_subset_mask, unlearn_data
from pipeline.methods.batchnorm import refresh_batchnorm_statistics
from pipeline.methods.lotus import (forget_gap, lotus_targets, resolve_alpha,
                                    should_stop, temperature)
from tests.conftest import CPU, SEED
from tests.methods.helpers import run_method, true_class_confidence


# ---- the temperature rule on hand-made accuracies ---------------------------------------------------------------

def test_temperature_uses_forget_accuracy_rounded_to_two_decimals():
    assert forget_gap(0.934, 0.75) == pytest.approx(0.18)
    assert temperature(8, 0.934, 0.75) == pytest.approx(math.exp(8 * 0.18))
    assert temperature(8, 0.996, 0.75) == pytest.approx(math.exp(8 * 0.25))  # rounds up to 1.00
    assert temperature(2, 0.75, 0.75) == pytest.approx(1.0)  # at the unseen level the targets are the teacher's
    assert temperature(32, 1.0, 0.0) == pytest.approx(math.exp(32))  # class mode: acc_u = 0


def test_early_stop_once_forget_accuracy_is_a_point_below_unseen():
    assert should_stop(0.74, 0.75)  # delta -0.01
    assert should_stop(0.28, 0.29)  # delta -0.0099999... in floats: still -0.01
    assert should_stop(0.5, 0.75)
    assert not should_stop(0.7449, 0.745)  # 0.74 - 0.745 = -0.005
    assert not should_stop(0.746, 0.75)  # rounds to 0.75: delta 0
    assert not should_stop(1.0, 0.75)


def test_alpha_defaults_by_class_count_and_mode_and_an_explicit_value_wins():
    assert resolve_alpha(None, 10, class_unlearning=False, class_alpha=32) == 8
    assert resolve_alpha(None, 100, class_unlearning=False, class_alpha=32) == 2
    assert resolve_alpha(None, 1000, class_unlearning=True, class_alpha=32) == 32
    assert resolve_alpha(5, 10, class_unlearning=False, class_alpha=32) == 5
    assert resolve_alpha(5, 10, class_unlearning=True, class_alpha=32) == 5


# ---- targets -----------------------------------------------------------------------------------------------------

TEACHER_LOGITS = torch.tensor([[4.0, 1.0, 0.0, -1.0, 0.5],
                               [0.0, 6.0, 1.0, 0.0, -2.0],
                               [2.0, 2.5, -1.0, 0.0, 0.0],
                               [-1.0, 0.0, 0.0, 7.0, 1.0]])
IS_FORGET = torch.tensor([True, False, True, False])


def test_gumbel_targets_are_one_hot_for_retain_and_soft_for_forget():
    torch.manual_seed(0)
    targets = lotus_targets(TEACHER_LOGITS, IS_FORGET, tau=8.0, use_gumbel=True)
    assert targets.shape == TEACHER_LOGITS.shape
    assert torch.allclose(targets.sum(dim=1), torch.ones(4))
    retain, forget = targets[~IS_FORGET], targets[IS_FORGET]
    assert set(retain.flatten().tolist()) <= {0.0, 1.0}  # one-hot samples of the teacher
    assert (forget > 0).all() and (forget.max(dim=1).values < 0.9).all()  # soft: every class keeps some mass
    assert not targets.requires_grad


def test_plain_softmax_switch_is_deterministic_and_differs_from_gumbel():
    plain = lotus_targets(TEACHER_LOGITS, IS_FORGET, tau=2.0, use_gumbel=False)
    assert torch.equal(plain, lotus_targets(TEACHER_LOGITS, IS_FORGET, tau=2.0, use_gumbel=False))
    assert torch.allclose(plain[IS_FORGET], F.softmax(TEACHER_LOGITS[IS_FORGET] / 2.0, dim=1))
    assert torch.equal(plain[~IS_FORGET], F.one_hot(TEACHER_LOGITS[~IS_FORGET].argmax(dim=1), 5).float())
    torch.manual_seed(0)
    gumbel = lotus_targets(TEACHER_LOGITS, IS_FORGET, tau=2.0, use_gumbel=True)
    assert not torch.allclose(gumbel[IS_FORGET], plain[IS_FORGET], atol=1e-3)
    # A hotter temperature flattens the forget targets.
    hotter = lotus_targets(TEACHER_LOGITS, IS_FORGET, tau=8.0, use_gumbel=False)
    assert (hotter[IS_FORGET].max(dim=1).values < plain[IS_FORGET].max(dim=1).values).all()


# ---- the retain subset -------------------------------------------------------------------------------------------

def test_retain_subset_is_exactly_the_configured_fraction_and_follows_the_seed(digits_hard):
    sources, _ = digits_hard
    ids = sources["retain"].sample_ids
    assert len(ids) == 720
    mask = retain_subset_mask(ids, 0.3, SEED)
    assert int(mask.sum()) == 216  # round(0.3 * 720), exactly: the paper takes 30 %
    assert np.array_equal(mask, retain_subset_mask(ids, 0.3, SEED))
    other_seed = retain_subset_mask(ids, 0.3, SEED + 1)
    assert int(other_seed.sum()) == 216 and not np.array_equal(mask, other_seed)
    # The choice depends on the set of ids, not on their order.
    order = np.random.default_rng(0).permutation(len(ids))
    assert np.array_equal(retain_subset_mask(ids[order], 0.3, SEED), mask[order])
    # Exact at any size, halves rounded up: round(0.3 * 5) = 2 (1.5), round(0.5 * 5) = 3 (2.5).
    for count, fraction, expected in ((5, 0.3, 2), (5, 0.5, 3), (7, 0.3, 2), (1, 0.3, 0), (720, 0.1, 72)):
        assert int(retain_subset_mask(ids[:count], fraction, SEED).sum()) == expected
    assert retain_subset_mask(ids, 1.0, SEED).all()

    method = create_method("lotus", seed=SEED, log=None)
    assert method.retain_fraction == 0.3
    data = unlearn_data(sources, method, SEED)
    assert sorted(data.retain.sample_ids) == sorted(ids[mask])
    assert len(data.mixed) == 80 + 216 and int(data.mixed.is_forget.sum()) == 80


def test_ray_data_plan_takes_the_same_retain_subset_as_in_process(digits_hard_uri, digits_hard):
    """The driver's plan (read by every Ray worker) holds exactly the in-process subset, sample for sample."""
    from pipeline.data.shards import read_meta
    from pipeline.train.datasets import plan_sets, read_layout

    sources, splits = digits_hard
    meta = read_meta(digits_hard_uri)
    plan = plan_sets(digits_hard_uri, meta, splits, ["retain@0.3", "mixed@0.3"], 32, [0.3], mode="stream")
    layout = read_layout(digits_hard_uri, meta)
    first_row = {(shard, group): first for shard, group, first, _ in layout.row_groups}

    def planned(name):
        units = plan.sets[name].units
        rows = np.concatenate([first_row[(u.shard, u.row_group)] + u.rows for u in units])
        flags = np.concatenate([u.is_forget for u in units])
        return layout.ids[rows], flags

    method = create_method("lotus", seed=SEED, log=None)
    data = unlearn_data(sources, method, SEED)
    retain_ids, _ = planned("retain@0.3")
    assert len(retain_ids) == 216 and sorted(retain_ids) == sorted(data.retain.sample_ids)
    mixed_ids, is_forget = planned("mixed@0.3")
    assert sorted(mixed_ids[~is_forget]) == sorted(data.retain.sample_ids)
    assert sorted(mixed_ids[is_forget]) == sorted(sources["forget"].sample_ids)


# ---- class-unlearning mode ----------------------------------------------------------------------------------------

class PixelReader(nn.Module):
    """Predicts the class written in the first pixel: perfectly accurate on the hand-made sets below."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, images):
        return self.scale * F.one_hot(images[:, 0, 0, 0].long(), self.num_classes).float()


def labelled_images(labels):
    labels = torch.tensor(labels)
    images = labels.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).to(torch.uint8).clone()
    return TensorSource(images, labels, [f"s{i}" for i in range(len(labels))])


def test_class_unlearning_takes_unseen_accuracy_as_zero_and_alpha_32():
    model = PixelReader(5)
    forget = labelled_images([3, 3, 3, 3])
    unseen = labelled_images([0, 1, 2, 3, 4])  # the original is right on all of it: acc_u would be 1.0
    data = UnlearnData(forget=forget, retain=labelled_images([0, 1]), unseen=unseen, num_classes=5,
                       forget_classes=(3,))
    method = create_method("lotus", seed=SEED, log=None)
    method.teacher = model
    method.prepare(model, data, CPU)
    assert method.acc_u == 0.0 and method.alpha == 32
    assert method.begin_epoch(0, model, data, CPU)
    assert method.progress_extras()["tau"] == pytest.approx(math.exp(32 * 1.0))

    # Instance unlearning on the same sets: acc_u is measured on D_u, alpha 8 for 5 classes.
    instance = create_method("lotus", seed=SEED, log=None)
    instance.teacher = model
    instance.prepare(model, UnlearnData(forget=forget, retain=data.retain, unseen=unseen, num_classes=5), CPU)
    assert instance.acc_u == 1.0 and instance.alpha == 8
    with pytest.raises(ValueError, match="D_u"):
        instance.prepare(model, UnlearnData(forget=forget, retain=data.retain, num_classes=5), CPU)


# ---- BatchNorm statistics ---------------------------------------------------------------------------------------

def test_batchnorm_refresh_replaces_lagging_statistics_with_the_data_s_own():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3))
    images = torch.rand(24, 1, 4, 4) * 3 + 1  # far from the stale mean 7 / var 9
    source = TensorSource(images, torch.zeros(24), [str(i) for i in range(24)])
    norm = model[1]
    norm.running_mean.fill_(7.0)
    norm.running_var.fill_(9.0)
    model.eval()
    seen = refresh_batchnorm_statistics(model, source, CPU, batch_size=24, max_batches=5, seed=0)
    with torch.no_grad():
        features = model[0](images)
    assert seen == 24
    assert torch.allclose(norm.running_mean, features.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(norm.running_var, features.var(dim=(0, 2, 3)), rtol=1e-3)
    assert norm.momentum == 0.1 and not model.training  # settings restored
    # Limited to max_batches: one batch of 8 is all it reads.
    assert refresh_batchnorm_statistics(model, source, CPU, batch_size=8, max_batches=1, seed=0) == 8


# ---- the history of a run, and early stopping (its defaults at three forget settings: test_defaults.py) ----------

def forget_accuracy_after_each_epoch(sources):
    """An on_epoch_end callback and the list it fills: D_f accuracy measured here, independently of the method,
    after each epoch (what the next epoch's acc_f must be, before rounding)."""
    measured = []

    def callback(epoch, model, entry):
        measured.append(accuracy(model, sources["forget"], CPU))

    return callback, measured


def assert_history_follows_the_rule(history, method, forget_accuracies):
    """Every epoch's acc_f, delta and tau, written out from the paper (not with the method's own functions):
    acc_f = the student's D_f accuracy at the epoch's start rounded to 2 decimals, delta = acc_f - acc_u,
    tau = exp(alpha * delta)."""
    for entry, measured in zip(history, forget_accuracies):
        assert entry["acc_f"] == round(measured, 2) and entry["acc_u"] == method.acc_u
        assert entry["delta"] == pytest.approx(entry["acc_f"] - method.acc_u, abs=1e-12)
        assert entry["tau"] == pytest.approx(math.exp(method.alpha * (entry["acc_f"] - method.acc_u)), rel=1e-12)
        assert entry["acc_f"] - method.acc_u > -0.01 + 1e-9  # the epoch ran: not yet a point below unseen


def test_lotus_at_its_defaults_makes_a_random_forget_set_look_unseen_by_the_rule(digits_hard, original_model):
    # On a random forget set LoTUS's aim is the output distribution of data the model never saw, not a lower
    # argmax: forget accuracy stays at 1.00 on originals 0-2, but the true-class confidence on D_f falls from
    # 0.995 to 0.64-0.68, to the original's level on unseen data (0.63-0.67), at test -0.09..-0.07.
    sources, _ = digits_hard
    original = copy.deepcopy(original_model)
    forget_before = accuracy(original, sources["forget"], CPU)
    callback, measured = forget_accuracy_after_each_epoch(sources)
    method, report = run_method("lotus", original_model, sources, original=original, on_epoch_end=callback)
    assert method.alpha == 8 and report.epochs_run == 10 == len(report.history)  # no early stop here
    assert_history_follows_the_rule(report.history, method, [forget_before, *measured])
    unseen_confidence = true_class_confidence(original, sources["unseen"])
    assert true_class_confidence(original_model, sources["forget"]) < unseen_confidence + 0.05


def test_lotus_stops_once_forget_accuracy_is_a_point_below_unseen(digits_hard, original_model):
    # A controlled run: lr 3e-3 (30x the default) takes D_f's accuracy from 1.00 to 0.41-0.46 in one epoch on
    # originals 0-2, far below acc_u (0.73-0.79): the rule must stop before epoch 2.
    sources, _ = digits_hard
    original = copy.deepcopy(original_model)
    callback, measured = forget_accuracy_after_each_epoch(sources)
    method, report = run_method("lotus", original_model, sources, config={"lr": 3e-3}, original=original,
                                on_epoch_end=callback)
    assert report.epochs_run == 1 and len(report.history) == 1 and len(measured) == 1
    assert_history_follows_the_rule(report.history, method, [accuracy(original, sources["forget"], CPU)])
    # The stop was decided on the model as it is now, by the rule written out.
    assert method.acc_f == round(measured[0], 2) == round(accuracy(original_model, sources["forget"], CPU), 2)
    assert method.acc_f - method.acc_u <= -0.01
