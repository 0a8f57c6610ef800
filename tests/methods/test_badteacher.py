import pytest
import torch

from pipeline.methods.badteacher import incompetent_copy
from tests.conftest import FORGET_CLASS
from tests.methods.helpers import assert_forgets_and_keeps_test_accuracy, forget_and_test_accuracy


def test_badteacher_forgets_a_class_and_keeps_the_others(digits_hard_class, original_model):
    # Class forgetting, the paper's main setting. Measured on seven originals: forget 1.00 -> 0.12-0.53, the other
    # classes' test accuracy +0.01..-0.06. On a random 10 % the incompetent teacher's pull on D_f leaks to every
    # class: forget 0.91-0.98 at test -0.07..-0.11 (configs/digits.yaml's benchmark shows it).
    assert_forgets_and_keeps_test_accuracy("badteacher", original_model, digits_hard_class,
                                           test_tolerance=0.08, forget_classes=(FORGET_CLASS,))


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
