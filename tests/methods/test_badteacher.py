"""Bad Teacher's incompetent teacher (its defaults at three forget settings: test_defaults.py)."""

import pytest
import torch

from pipeline.methods.badteacher import incompetent_copy
from tests.methods.helpers import forget_and_test_accuracy


def test_incompetent_teacher_is_a_seeded_random_model(digits_hard, original_model):
    sources = digits_hard[0]
    rng_state = torch.get_rng_state()
    teacher = incompetent_copy(original_model, seed=5)
    assert torch.equal(torch.get_rng_state(), rng_state), "drawing the teacher must not consume the global RNG"
    again = incompetent_copy(original_model, seed=5)
    for a, b in zip(teacher.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    # Random weights know nothing: near chance on D_f (10 classes), where the original is perfect.
    forget_accuracy, _ = forget_and_test_accuracy(teacher, sources)
    assert forget_accuracy < 0.35
