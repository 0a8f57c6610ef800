"""NPO's forget loss (its defaults at three forget settings: test_defaults.py)."""

import math

import torch

from pipeline.methods import create_method


def npo_loss_and_gradient(label_logit: float, beta: float) -> tuple[float, float]:
    """NPO's forget loss of one sample whose original gave its label logit 0 (of 2 classes), and d loss / d logit."""
    method = create_method("npo", {"beta": beta}, log=None)
    method.teacher = lambda images: torch.zeros(len(images), 2)
    logits = torch.tensor([[label_logit, 0.0]], requires_grad=True)
    loss = method.forget_loss(logits, torch.tensor([0]), torch.zeros(1, 1)).sum()
    loss.backward()
    return loss.item(), logits.grad[0, 0].item()


def test_npo_forget_loss_starts_like_gradient_ascent_and_saturates():
    beta = 1.0
    loss_at_original, gradient_at_original = npo_loss_and_gradient(0.0, beta)
    # Same model as the original: log-ratio 0, loss (2/β)·ln 2; gradient = gradient ascent's, d(log p)/dz = 1 − p = ½.
    assert math.isclose(loss_at_original, 2 / beta * math.log(2), rel_tol=1e-5)
    assert math.isclose(gradient_at_original, 0.5, rel_tol=1e-4)
    # Far below the original's probability the loss flattens out (bounded below by 0) and its gradient fades,
    # where gradient ascent's would stay near 1.
    loss_far, gradient_far = npo_loss_and_gradient(-12.0, beta)
    assert 0.0 < loss_far < 1e-3
    assert 0.0 < gradient_far < 1e-3
