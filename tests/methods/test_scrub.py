from copy import deepcopy

import torch

from tests.methods.helpers import assert_forgets_and_keeps_test_accuracy


def test_scrub_changes_the_model_forgets_and_keeps_test_accuracy(digits_hard, original_model):
    original = deepcopy(original_model)
    # lr 4e-3 (the default is 5e-3): measured on seven originals forget 1.00 -> 0.86-0.99, test +0.03..-0.05. At
    # the default the max-steps push harder and vary more (forget 0.66-0.93, test -0.03..-0.11).
    assert_forgets_and_keeps_test_accuracy("scrub", original_model, digits_hard[0], test_tolerance=0.07,
                                           config={"lr": 4e-3})
    changed = [name for (name, after), before in zip(original_model.named_parameters(), original.parameters())
               if not torch.equal(after, before)]
    assert len(changed) == len(list(original.parameters())), "every parameter of the unlearned model must move"
