"""The published SAFEMax loss (issue 33): ψ(t) = exp(−decay·t/T) over every t, the target chosen by `target`.
On a small untrained DDPM and plain tensors: no training, no Ray; the quality check (it forgets, the other classes
hold) is tests/test_diffusion.py::test_published_safemax_forgets_the_class_and_keeps_the_others."""

import math

import pytest
import torch

from pipeline.errors import ConfigError
from tests.conftest import one_torch_thread

CPU = torch.device("cpu")
SPEC = {"num_classes": 10, "channels": 1, "image_size": 8, "widths": [8, 8], "timesteps": 100, "schedule": "linear"}
FORGET = 3


@pytest.fixture(autouse=True)
def threads():
    with one_torch_thread():
        yield


def _prepared(settings: dict, seed: int = 0):
    """(method, model): the method's per-run state set up on a fresh, seeded model, as the shared loop does."""
    from pipeline.methods import create_diffusion_method
    from pipeline.methods.base import UnlearnData
    from pipeline.models.diffusion import DiffusionSpec, build_diffusion_model

    torch.manual_seed(0)
    model = build_diffusion_model(DiffusionSpec(**SPEC))
    method = create_diffusion_method("safemax", settings, seed=seed, log=None)
    method.prepare(model, UnlearnData(forget=None, retain=None, num_classes=10, forget_classes=(FORGET,)), CPU)
    return method, model


def _forget_batch(count: int = 16) -> dict:
    images = torch.randint(0, 256, (count, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    return {"image": images, "label": torch.full((count,), FORGET), "is_forget": torch.ones(count, dtype=torch.bool)}


def test_the_weights_are_uniform_without_decay_and_fall_with_t_from_one_at_t0():
    from pipeline.methods.safemax import timestep_weights

    t = torch.arange(1000)
    assert torch.equal(timestep_weights(t, 0, 1000), torch.ones(1000))
    for decay in (1, 50, 100):
        weights = timestep_weights(t, decay, 1000)
        assert weights[0] == 1 and weights.argmax() == 0
        assert bool((weights[1:] < weights[:-1]).all())  # strictly decreasing in t
        assert weights[-1].item() == pytest.approx(math.exp(-decay * 999 / 1000), rel=1e-5)


def test_the_loss_is_the_mean_of_the_weighted_errors_over_every_timestep():
    """loss = mean over the forgotten samples of ψ(t)·‖target − ε_θ(x_t, c_f, t)‖², t drawn from all of 0..T−1."""
    from pipeline.methods.safemax import timestep_weights

    for decay in (0.0, 1.0, 50.0):
        method, model = _prepared({"decay": decay})
        drawn = []
        targets = method.forget_targets
        method.forget_targets = lambda *args: drawn.append(targets(*args)) or drawn[-1]
        loss = method.loss(model, _forget_batch(), CPU)
        x_t, t, labels, target = drawn[0]
        with torch.no_grad():
            errors = ((model(x_t, t, labels) - target) ** 2).flatten(1).mean(1)
        expected = (timestep_weights(t, decay, SPEC["timesteps"]) * errors).mean()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    draws = torch.cat([_prepared({}, seed=seed)[0].forget_targets(None, torch.zeros(64, 1, 8, 8),
                                                                   torch.full((64,), FORGET), CPU)[1]
                       for seed in range(8)])
    assert draws.min() < 10 and draws.max() >= 90  # low and high noise alike: no cutoff


def test_the_target_setting_reaches_the_loss():
    from pipeline.models.diffusion_process import max_entropy_target

    x0 = torch.rand(32, 1, 8, 8) * 2 - 1
    labels = torch.full((32,), FORGET)
    noise_method, model = _prepared({"target": "noise"})
    entropy_method, _ = _prepared({"target": "max_entropy"})
    x_t, t, _, noise_target = noise_method.forget_targets(model, x0, labels, CPU)
    same_x_t, same_t, _, entropy_target = entropy_method.forget_targets(model, x0, labels, CPU)
    assert torch.equal(x_t, same_x_t) and torch.equal(t, same_t)  # the same draws up to the target
    assert torch.equal(entropy_target, max_entropy_target(model, x_t, t))
    # ε_T is a fresh N(0, I) draw, not the noise inside x_t nor a function of it.
    assert abs(noise_target.std().item() - 1) < 0.1 and abs(noise_target.mean().item()) < 0.1
    implied_noise = (x_t - model.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1) * x0) / \
        (1 - model.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    assert abs(torch.corrcoef(torch.stack([noise_target.flatten(), implied_noise.flatten()]))[0, 1]) < 0.1
    losses = [_prepared({"target": name})[0].loss(model, _forget_batch(), CPU).item() for name in ("noise", "max_entropy")]
    assert losses[0] != losses[1]


def test_guidance_corrects_either_target_towards_the_guided_prediction():
    """w > 1: the conditional target is ε_u + (target − ε_u)/w, so ε_u + w(target' − ε_u) = target."""
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1
    labels = torch.full((8,), FORGET)
    for name in ("noise", "max_entropy"):
        plain, model = _prepared({"target": name})
        guided, _ = _prepared({"target": name, "guidance": 2.0})
        x_t, t, _, target = plain.forget_targets(model, x0, labels, CPU)
        _, _, _, corrected = guided.forget_targets(model, x0, labels, CPU)
        with torch.no_grad():
            unconditional = model(x_t, t, torch.full_like(labels, model.null_class))
        assert torch.allclose(unconditional + 2.0 * (corrected - unconditional), target, atol=1e-5)


@pytest.mark.parametrize("settings, message", [
    ({"decay": -1}, "safemax.decay .* must be 0 or more, not -1"),
    ({"decay": float("nan")}, "safemax.decay .* must be 0 or more, not nan"),
    ({"target": "zeros"}, "safemax.target must be one of noise, max_entropy .*not 'zeros'"),
    ({"guidance": 0.5}, "safemax.guidance must be at least 1, not 0.5"),
])
def test_bad_settings_are_refused_on_the_driver(settings, message):
    from pipeline.runs.diffusion import checked_settings

    with pytest.raises(ConfigError, match=message):
        checked_settings("safemax", settings, 1000)


def test_the_defaults_are_the_papers():
    from pipeline.runs.diffusion import checked_settings

    settings = checked_settings("safemax", {}, 1000)
    assert (settings["decay"], settings["target"], settings["guidance"]) == (1.0, "noise", 1.0)
    assert "t_min" not in settings and "noise_input_fraction" not in settings
    cutoff = checked_settings("safemax-cutoff", {}, 1000, guidance=2.0)  # the variant, at the bench's w = 2
    assert (cutoff["t_min"], cutoff["noise_input_fraction"], cutoff["guidance"]) == (100, 0.5, 2.0)


@pytest.mark.parametrize("method, settings, w, trained", [
    ("safemax", {}, 3.0, 1.0),  # the paper's loss: no correction, whatever w the evaluation samples at
    ("safemax", {"guidance": "eval"}, 3.0, 3.0),
    ("safemax", {"guidance": 3}, 3.0, 3.0),
    ("safemax", {"guidance": 1}, 4.0, 1.0),
    ("safemax-cutoff", {}, 3.0, 3.0),  # default `eval`: the evaluation's w
    ("safemax-cutoff", {"guidance": 1.0}, 2.0, 1.0),  # explicitly no correction
])
def test_the_guidance_correction_is_tied_to_the_evaluations_w(method, settings, w, trained):
    from pipeline.runs.diffusion import checked_settings

    assert checked_settings(method, settings, 1000, guidance=w)["guidance"] == trained


@pytest.mark.parametrize("method", ["safemax", "safemax-cutoff"])
def test_a_guidance_mismatch_and_an_untied_eval_are_refused(method):
    from pipeline.runs.diffusion import checked_settings

    with pytest.raises(ConfigError, match=rf"{method}.guidance=2 .*w=2, but this run evaluates at guidance w=3"):
        checked_settings(method, {"guidance": 2.0}, 1000, guidance=3.0)
    with pytest.raises(ConfigError, match=rf"{method}.guidance=eval takes the evaluation's guidance scale"):
        checked_settings(method, {"guidance": "eval"}, 1000)  # no evaluation to take it from
    with pytest.raises(ConfigError, match=rf"{method}.guidance must be eval or a number"):
        checked_settings(method, {"guidance": "two"}, 1000, guidance=2.0)
