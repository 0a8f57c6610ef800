"""SalUn: random-label training that moves only the weights in the saliency mask (its defaults at three forget
settings: test_defaults.py)."""

import copy

import torch

from tests.methods.helpers import run_method


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
