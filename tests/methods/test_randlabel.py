"""Random labels' draws (its defaults at three forget settings: test_defaults.py)."""

import pytest
import torch

from pipeline.methods.randlabel import random_wrong_labels


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
