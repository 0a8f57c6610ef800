"""RF-JSD's sampling floor: the score of a model that never saw D_f, drawn from D_test with D_f's class counts."""

import pytest
import torch

from pipeline.metrics.divergence import retrain_free_jsd
from pipeline.metrics.floor import predict_probabilities, rf_jsd_floor
from tests.conftest import CPU
from tests.test_metrics import random_distributions

CLASSES = 4


def class_sums(probs, labels):
    sums = torch.zeros(CLASSES, CLASSES, dtype=torch.float64).index_add_(0, labels, probs)
    return sums, torch.bincount(labels, minlength=CLASSES).double()


def unseen_reference(seed=1):
    labels = torch.arange(40) % CLASSES
    return class_sums(random_distributions(40, CLASSES, seed), labels)


def test_drawing_every_test_sample_gives_rf_jsd_of_the_whole_test_set_with_no_spread():
    labels = torch.arange(24) % CLASSES
    probs = random_distributions(24, CLASSES, 2)
    sums, counts = class_sums(probs, labels)
    unseen_sums, unseen_counts = unseen_reference()
    floor = rf_jsd_floor(probs, labels, counts, unseen_sums, unseen_counts, draws=5)
    expected = retrain_free_jsd(sums, counts, unseen_sums, unseen_counts).value
    assert floor.mean == pytest.approx(expected, rel=1e-12) and floor.std == pytest.approx(0.0, abs=1e-15)
    assert floor.with_replacement == [] and floor.classes == [0, 1, 2, 3]


def test_a_model_whose_outputs_are_the_unseen_class_means_has_floor_zero():
    unseen_sums, unseen_counts = unseen_reference()
    labels = torch.arange(30) % CLASSES
    probs = (unseen_sums / unseen_counts.unsqueeze(1))[labels]
    floor = rf_jsd_floor(probs, labels, torch.tensor([3, 3, 3, 3]), unseen_sums, unseen_counts, draws=10)
    assert floor.mean == pytest.approx(0.0, abs=1e-12)


def test_the_floor_falls_as_the_forget_set_has_more_samples_per_class():
    labels = torch.arange(400) % CLASSES
    probs = random_distributions(400, CLASSES, 3, zero_fraction=0.0) ** 4  # sharp rows: lumpy small means
    probs = probs / probs.sum(dim=1, keepdim=True)
    unseen_sums, unseen_counts = unseen_reference()
    floors = [rf_jsd_floor(probs, labels, torch.full((CLASSES,), n), unseen_sums, unseen_counts, draws=100, seed=0).mean
              for n in (2, 8, 50)]
    assert floors[0] > floors[1] > floors[2] > 0


def test_only_the_forget_set_classes_are_drawn_and_short_classes_are_drawn_with_replacement():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    probs = random_distributions(6, CLASSES, 4)
    unseen_sums, unseen_counts = unseen_reference()
    floor = rf_jsd_floor(probs, labels, torch.tensor([5, 2, 0, 3]), unseen_sums, unseen_counts, draws=3)
    assert floor.classes == [0, 1] and floor.with_replacement == [0] and floor.missing == [3]


def test_the_floor_is_seeded():
    labels = torch.arange(80) % CLASSES
    probs = random_distributions(80, CLASSES, 5)
    unseen_sums, unseen_counts = unseen_reference()
    counts = torch.full((CLASSES,), 5)
    first, again, other = (rf_jsd_floor(probs, labels, counts, unseen_sums, unseen_counts, draws=20, seed=s).mean
                           for s in (7, 7, 8))
    assert first == again and first != other


def test_no_drawable_class_gives_none_and_zero_draws_is_an_error():
    unseen_sums, unseen_counts = unseen_reference()
    labels, probs = torch.tensor([0, 1]), random_distributions(2, CLASSES, 6)
    assert rf_jsd_floor(probs, labels, torch.tensor([0, 0, 4, 0]), unseen_sums, unseen_counts) is None
    with pytest.raises(ValueError, match="at least one draw"):
        rf_jsd_floor(probs, labels, torch.tensor([1, 1, 0, 0]), unseen_sums, unseen_counts, draws=0)


def test_predicted_probabilities_are_softmax_rows_in_source_order(digits_hard, original_model):
    test = digits_hard[0]["test"]
    original_model.train()
    probs, labels = predict_probabilities(original_model, test, CPU, batch_size=64)
    assert original_model.training  # its mode is given back
    assert probs.shape == (len(test), 10) and torch.equal(labels, test.labels)
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(test), dtype=torch.float64))
    assert probs.argmax(dim=1).eq(labels).double().mean() > 0.5  # eval mode: the trained model, not noise
