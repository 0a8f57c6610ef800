import pytest
import torch

from pipeline.methods.randlabel import random_wrong_labels
from tests.methods.helpers import assert_forgets_and_keeps_test_accuracy


def test_randlabel_forgets_and_keeps_test_accuracy(digits_hard, original_model):
    # Wrong labels on D_f also mislead test samples of the same classes: test accuracy may drop up to 0.08.
    assert_forgets_and_keeps_test_accuracy("randlabel", original_model, digits_hard[0], test_tolerance=0.08)


def test_random_labels_are_always_wrong_and_cover_every_other_class():
    labels = torch.arange(10).repeat(500)
    drawn = random_wrong_labels(labels, 10, torch.Generator().manual_seed(0))
    assert not (drawn == labels).any()
    for label in range(10):
        others = set(drawn[labels == label].tolist())
        assert others == set(range(10)) - {label}


def test_random_labels_follow_the_seed():
    labels = torch.arange(10)
    first = random_wrong_labels(labels, 10, torch.Generator().manual_seed(7))
    again = random_wrong_labels(labels, 10, torch.Generator().manual_seed(7))
    assert torch.equal(first, again)
