"""JiT: zero-shot Lipschitz smoothing around D_f that never reads D_r."""

import pytest
import torch

from pipeline.methods import create_method
from pipeline.methods.base import UnlearnData
from pipeline.methods.batchnorm import batchnorm_layers
from tests.conftest import CPU, SEED
from tests.methods.helpers import Margin, check_defaults


class ForbiddenSource:
    """A batch source that fails the test if anything asks it for data."""

    def __init__(self, name):
        self.name = name

    def batches(self, batch_size, shuffle=False, seed=0):
        raise AssertionError(f"JiT read {self.name}")


@torch.no_grad()
def lipschitz_ratio(model, source, copies=25, sigma=0.1, seed=0):
    """Mean ‖f(x) − f(x′)‖ / ‖x − x′‖ over D_f with fixed noise, measured independently of the method."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    ratios = []
    for batch in source.batches(40):
        clean = batch["image"].float() / 255.0
        perturbed = (clean.unsqueeze(0) + sigma * torch.randn((copies, *clean.shape), generator=generator)).clamp(0, 1)
        outputs = model(clean)
        perturbed_outputs = model(perturbed.flatten(0, 1)).view(copies, *outputs.shape)
        ratios.append((outputs - perturbed_outputs).flatten(2).norm(dim=2)
                      / (clean - perturbed).flatten(2).norm(dim=2))
    return float(torch.cat(ratios, dim=1).mean())


def zero_shot_data(sources):
    return UnlearnData(forget=sources["forget"], retain=ForbiddenSource("retain"), mixed=ForbiddenSource("mixed"),
                       unseen=sources["unseen"])


@torch.no_grad()
def eval_outputs(model, source):
    model.eval()
    return torch.cat([model(batch["image"].float() / 255.0) for batch in source.batches(256)])


def test_jit_never_reads_retain_and_smooths_the_model_around_forget(digits_hard, original_model):
    sources = digits_hard[0]
    ratio_before = lipschitz_ratio(original_model, sources["forget"])
    method = create_method("jit", seed=SEED, log=None)
    assert method.needs_retain is False
    report = method.unlearn(original_model, None, zero_shot_data(sources), CPU)
    assert report.epochs_run == 1
    ratio_after = lipschitz_ratio(original_model, sources["forget"])
    assert ratio_after < 0.95 * ratio_before, f"Lipschitz ratio on D_f {ratio_before:.3f} -> {ratio_after:.3f}"


def test_jit_without_a_step_leaves_the_model_as_it_was_even_for_a_whole_class(digits_hard_uri, original_model):
    # D_f = all of class 3. Re-estimating BatchNorm statistics from it alone made the model "forget" the class
    # with no training at all (forget 1.00 -> 0.05). The statistics must only follow the weights.
    from pipeline.data.local import load_sources

    sources, _ = load_sources(digits_hard_uri, spec="class:3", seed=SEED)
    before = eval_outputs(original_model, sources["test"])
    create_method("jit", {"lr": 0.0}, seed=SEED, log=None).unlearn(original_model, None, zero_shot_data(sources), CPU)
    assert torch.allclose(eval_outputs(original_model, sources["test"]), before, atol=1e-5)


def test_jit_statistics_undo_a_rescaled_channel(digits_hard, original_model):
    # JiT's cheapest way to flatten the output is to shrink activations; BatchNorm in the deployed model must
    # see through that. Shrink the first convolution's filters by 0.3: after the epoch's statistics update the
    # model computes what it did before, though only D_f was read.
    sources = digits_hard[0]
    method = create_method("jit", seed=SEED, log=None)
    data = zero_shot_data(sources)
    # The carry-over is exact but for BatchNorm's eps (with the default 1e-5, logits of size ~5 moved by
    # 0.01-0.05 depending on the original); with eps ~0 what remains is float rounding.
    for norm in batchnorm_layers(original_model):
        norm.eps = 1e-12
    before = eval_outputs(original_model, sources["test"])
    method.prepare(original_model, data, CPU)
    first_conv = next(m for m in original_model.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        first_conv.weight.mul_(0.3)
    shrunk = eval_outputs(original_model, sources["test"])
    method.end_epoch(0, original_model, data, CPU)
    after = eval_outputs(original_model, sources["test"])
    print(f"max |logit change|: shrunk {(shrunk - before).abs().max():.4f}, after the update {(after - before).abs().max():.4f}")
    assert (shrunk - before).abs().max() > 1.0
    assert (after - before).abs().max() < 1e-3
    # More than one BatchNorm: the later layers' statistics went through the same update and had to stay put.
    assert len(batchnorm_layers(original_model)) > 1


# Known limitation, recorded rather than hidden: JiT smooths the model around D_f (the test above) but does
# not change a memorised sample's label. Tried SGD lr 1e-4..1e-2 for 1-3 epochs (batches of 8): forget stays
# 1.00 while test accuracy falls to 0.67 at the top of that range; Adam and batch-statistics BatchNorm (train
# mode) only lowered forget accuracy together with test accuracy (0.76 -> 0.44..0.57). Also tried (in process,
# forget seeds 3407/13/12): the reference code's form (f(x') detached, train-mode BatchNorm with one forward per
# noisy copy, loss summed over the batch) keeps forget at 1.00 for lr 1e-4..1e-3 and lowers it only as the model
# collapses (lr 1e-2: forget 0.39, test 0.27); SGD momentum 0.5..0.9 at lr 3e-4..1e-3 flips at most 3 of 80 on
# seed 3407 at test 0.63..0.74 and none on seeds 13 and 12; smoothing softmax outputs instead of logits lowers
# forget only with test (0.91 at 0.55). With BatchNorm statistics carried over (not re-estimated from D_f), on
# seeds 3407/13/12: lr 1e-3 keeps forget 1.00 at test -0.02; 3e-3 flips 0-2 of 80 at test -0.06..-0.09; 1e-2
# flips 2-13 at test -0.15..-0.21. Smoothing logits or softmax outputs at sigma 0.05/0.1/0.15/0.2 (lr 1e-3..3e-2
# and 1e-2..3e-1), or the reference form at batch 8 and 128 (lr 1e-5..1e-3): no setting lowers forget accuracy on
# all three seeds at a test cost under 0.08 (the nearest: logits, sigma 0.15, lr 3e-3 flips 1-2 at -0.09). Why: the
# Lipschitz ratio is no higher on D_f than on D_r (1.34 vs 1.36, test 1.26), and noisy copies of D_f keep their
# memorised labels (0.99 at sigma 0.1), so the neighbourhood JiT smooths towards agrees with the memorised label.
# With the carried-over statistics and f(x') detached (the reference form), on the bench's original and seeds
# 3407/13/12: sigma 0.1/0.3/0.5 at lr 1e-4 keeps forget 1.00; 3e-4 at sigma 0.1 lowers forget to 0.88-0.94 only
# with test 0.77 -> 0.56-0.59 (retain 0.91-0.92: no more targeted than the forget drop); sigma 0.3/0.5 at 1e-3:
# forget 0.66-0.93 at test 0.43-0.62 (retain 0.78-0.94); sigma 0.1 at 1e-3, and any sigma at 3e-3 or more,
# collapse the model to one class (every accuracy ~0.10). Whole classes fare no better (the shipped form, the
# tests' original): with D_f = class 3 or class 7, lr 1e-3/3e-3/1e-2 keeps forget 1.00 while the other classes'
# test accuracy falls by 0.01-0.24; the reference form (f(x') detached, sigma 0.1-0.5, lr 3e-4 or 1e-3) leaves
# class 3 at 0.77-1.00 while the other classes lose 0.03-0.59. More epochs on class 3 (5-10, lr 1e-3..1e-2,
# sigma 0.1-0.5, three originals) make it worse: the class stays at 0.94-1.00 while the other classes' test
# accuracy falls by 0.09-0.81, because the model learns to call the noisy copies, and then everything, a 3.
# Smoothing a memorised sample's neighbourhood towards its output spreads its label; it does not remove it.
# Not even where JiT's premise should hold best, memorised *mislabelled* samples: three originals trained with a
# random 10 % relabelled at random, then JiT on those (lr 1e-3 / 3e-3 / 1e-2, or 3 epochs): 0-5 % of them lose the
# wrong label, at test -0.01..-0.12. Digits-hard's images are noisy already; its noisy copies are in distribution.
# Strict: remove the marker if a recipe starts to pass.
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="JiT does not lower forget accuracy of a memorised set on digits-hard")
def test_jit_forgets_and_keeps_test_accuracy(digits_hard, original_model):
    # The smallest claim: 2 of 80 memorised samples lose their label, at the test cost the other methods keep.
    check_defaults("jit", original_model, digits_hard[0], Margin(test_drop=0.05, flipped=2))
