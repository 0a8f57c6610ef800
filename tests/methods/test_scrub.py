from copy import deepcopy

import torch

from tests.methods.helpers import assert_forgets_and_keeps_test_accuracy


def test_scrub_changes_the_model_forgets_and_keeps_test_accuracy(digits_hard, original_model):
    original = deepcopy(original_model)
    # Min-steps distil the original on D_r, so test accuracy stays close: tolerance 0.07.
    assert_forgets_and_keeps_test_accuracy("scrub", original_model, digits_hard[0], test_tolerance=0.07)
    changed = [name for (name, after), before in zip(original_model.named_parameters(), original.parameters())
               if not torch.equal(after, before)]
    assert len(changed) == len(list(original.parameters())), "every parameter of the unlearned model must move"
