"""SalUn: random-label training that moves only the weights in the saliency mask."""

import copy

import torch

from tests.conftest import FORGET_CLASS
from tests.methods.helpers import assert_forgets_and_keeps_test_accuracy, run_method


def test_salun_moves_only_masked_weights(digits_hard, original_model):
    # Adam with coupled weight decay 5e-4 (the default) would move every weight with zero gradient
    # too; the method must keep the unmasked ones bit-identical anyway.
    original = copy.deepcopy(original_model)
    method, _ = run_method("salun", original_model, digits_hard[0])
    assert method.config["weight_decay"] > 0

    before, after = dict(original.named_parameters()), dict(original_model.named_parameters())
    masked = sum(int(mask.sum()) for mask in method.mask.values())
    total = sum(p.numel() for p in original.parameters())
    assert masked == round(method.config["mask_fraction"] * total)
    changed_inside = 0
    for name, mask in method.mask.items():
        assert torch.equal(after[name][~mask], before[name][~mask]), f"{name}: a weight outside the mask moved"
        changed_inside += int((after[name][mask] != before[name][mask]).sum())
    assert changed_inside > 0.9 * masked, f"only {changed_inside} of {masked} masked weights changed"


def test_salun_forgets_a_class_and_keeps_the_others(digits_hard_class, original_model):
    # Class-wise forgetting (one of the paper's two settings), one Adam epoch at lr 1e-4. Measured on seven
    # originals: forget 1.00 -> 0.35-0.89, the other classes' test accuracy +0.02..-0.06. On a random 10 % the same
    # epoch left forget at 1.00 on three of five originals (test -0.06..-0.08); lr 3e-4 for 2 epochs moved it to
    # 0.93-0.95 at test up to -0.09.
    assert_forgets_and_keeps_test_accuracy("salun", original_model, digits_hard_class,
                                           test_tolerance=0.08, forget_classes=(FORGET_CLASS,))
