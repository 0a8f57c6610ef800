"""SCRUB updates the model it unlearns (its defaults at three forget settings: test_defaults.py)."""

from copy import deepcopy

import torch

from tests.conftest import FORGET_CLASS
from tests.methods.helpers import run_method


def test_scrub_changes_every_parameter_of_the_model(digits_hard, original_model):
    original = deepcopy(original_model)
    run_method("scrub", original_model, digits_hard[0], original=original)
    changed = [name for (name, after), before in zip(original_model.named_parameters(), original.parameters())
               if not torch.equal(after, before)]
    assert len(changed) == len(list(original.parameters())), "every parameter of the unlearned model must move"


def test_scrub_uses_class_lr_for_whole_classes_only(digits_hard, digits_hard_class, original_model):
    from pipeline.methods import create_method
    from pipeline.methods.harness import unlearn_data

    for sources, classes, expected in ((digits_hard[0], (), 5e-3), (digits_hard_class, (FORGET_CLASS,), 1e-3)):
        method = create_method("scrub", {"epochs": 0}, log=None)
        method.unlearn(deepcopy(original_model), original_model, unlearn_data(sources, method, 0,
                                                                              forget_classes=classes),
                       torch.device("cpu"))
        assert [group["lr"] for group in method.optimizer.param_groups] == [expected]
