"""What every method test checks: forget accuracy falls below the original's, test accuracy holds."""

import torch

from pipeline.methods import create_method
from pipeline.methods.base import accuracy
from pipeline.methods.harness import unlearn_data
from tests.conftest import CPU, SEED


def run_method(name, model, sources, config=None, seed=SEED, original=None):
    """Run `name` in place on `model` (the original's copy); return the method and its report."""
    torch.manual_seed(seed)
    method = create_method(name, config, seed=seed, log=None)
    data = unlearn_data(sources, method, seed)
    report = method.unlearn(model, original, data, CPU)
    return method, report


def forget_and_test_accuracy(model, sources):
    return accuracy(model, sources["forget"], CPU), accuracy(model, sources["test"], CPU)


def assert_forgets_and_keeps_test_accuracy(name, original_model, sources, test_tolerance, config=None):
    """Forget accuracy must fall below the original's; test accuracy may drop at most `test_tolerance`."""
    from copy import deepcopy

    original = deepcopy(original_model)
    forget_before, test_before = forget_and_test_accuracy(original, sources)
    run_method(name, original_model, sources, config, original=original)
    forget_after, test_after = forget_and_test_accuracy(original_model, sources)
    assert forget_after < forget_before, f"{name}: forget accuracy {forget_before:.3f} -> {forget_after:.3f}"
    assert test_after >= test_before - test_tolerance, f"{name}: test accuracy {test_before:.3f} -> {test_after:.3f}"
    return forget_before, forget_after, test_before, test_after
