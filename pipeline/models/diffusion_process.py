"""The forward process, the training objectives, a DDIM sampler and the batched sampling plan: plain functions of
a `DiffusionModel` (pipeline/models/diffusion.py).

Sampling uses DDIM with η = 0 (Song et al., 2021) over `steps` evenly spaced timesteps (default 25 of 1000):
deterministic given the starting noise, and 40x fewer network passes than ancestral DDPM sampling, which is what
makes evaluating every model on a CPU take seconds. Its x0 predictions are not clipped, so a sample for a
forgotten class shows exactly what the model produces (pure noise keeps its spread).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.distributed import unwrap


def _gathered(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return alphas_cumprod.index_select(0, t).view(-1, 1, 1, 1)


def add_noise(model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε."""
    a = _gathered(_schedule(model), t)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def _schedule(model) -> torch.Tensor:
    return unwrap(model).alphas_cumprod


def random_timesteps(count: int, low: int, high: int, generator: torch.Generator, device) -> torch.Tensor:
    """Uniform integers in [low, high)."""
    return torch.randint(low, high, (count,), generator=generator).to(device)


def gaussian(shape, generator: torch.Generator, device) -> torch.Tensor:
    return torch.randn(shape, generator=generator).to(device)


def denoising_loss(model, x0: torch.Tensor, labels: torch.Tensor, t: torch.Tensor, generator: torch.Generator,
                   reduce: bool = True) -> torch.Tensor:
    """The DDPM objective ‖ε − ε_θ(x_t, t, y)‖², mean over pixels (and over the batch when `reduce`)."""
    noise = gaussian(x0.shape, generator, x0.device)
    per_sample = F.mse_loss(model(add_noise(model, x0, t, noise), t, labels), noise, reduction="none")
    per_sample = per_sample.flatten(1).mean(dim=1)
    return per_sample.mean() if reduce else per_sample


def max_entropy_target(model, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The ε-prediction of the ideal denoiser when the data distribution is N(0, I): E[ε | x_t] = √(1 − ᾱ_t) · x_t.

    Among distributions with the noise's per-pixel variance, the standard Gaussian has the largest entropy; a
    model that predicts this for a class generates N(0, I) samples for it (its x_t stays N(0, I) at every t).
    """
    return (1 - _gathered(_schedule(model), t)).sqrt() * x_t


def sampling_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """`steps` timesteps from T−1 down to 0, evenly spaced (DDIM's "uniform" skip)."""
    steps = max(1, min(steps, num_timesteps))
    return sorted({round(i * (num_timesteps - 1) / max(steps - 1, 1)) for i in range(steps)}, reverse=True)


@torch.no_grad()
def ddim_sample(model, labels: torch.Tensor, steps: int = 25, generator: torch.Generator | None = None,
                guidance: float = 1.0, noise: torch.Tensor | None = None, clip: bool = False) -> torch.Tensor:
    """Samples in model space ([-1, 1] for data-like output) for the class `labels`, one per label.

    `guidance` w: ε = ε_uncond + w (ε_cond − ε_uncond) (classifier-free guidance); w = 1 is the plain
    conditional model (one network pass per step).
    """
    module = unwrap(model)
    device = labels.device
    spec = module.spec
    shape = (len(labels), spec.channels, spec.image_size, spec.image_size)
    x = noise.to(device) if noise is not None else gaussian(shape, generator or torch.Generator(), device)
    return ddim_from(module, x, labels, sampling_timesteps(module.num_timesteps, steps), guidance, clip)


def partial_timesteps(num_timesteps: int, steps: int, start: int) -> list[int]:
    """Timesteps from `start` down to 0 at the spacing of `steps` over all T (at least two): SDEdit's schedule."""
    count = max(2, round(steps * start / max(num_timesteps - 1, 1)) + 1)
    return sorted({round(i * start / (count - 1)) for i in range(count)}, reverse=True)


@torch.no_grad()
def ddim_from(module, x: torch.Tensor, labels: torch.Tensor, times: list[int], guidance: float,
              clip: bool) -> torch.Tensor:
    """DDIM (η = 0) from x = x_{times[0]} down through `times` (descending, ending at 0): all of sampling from
    T−1 (ddim_sample), or SDEdit's second half from a noised real image."""
    was_training = module.training
    module.eval()
    alphas = module.alphas_cumprod
    for position, step in enumerate(times):
        t = torch.full((len(labels),), step, device=x.device, dtype=torch.long)
        eps = _guided_eps(module, x, t, labels, guidance)
        a_t = alphas[step]
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        a_prev = alphas[times[position + 1]] if position + 1 < len(times) else torch.ones((), device=x.device)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    module.train(was_training)
    return x


def _guided_eps(module, x, t, labels, guidance: float) -> torch.Tensor:
    conditional = module(x, t, labels)
    if guidance == 1.0:
        return conditional
    unconditional = module(x, t, torch.full_like(labels, module.null_class))
    return unconditional + guidance * (conditional - unconditional)


@dataclass(frozen=True)
class SamplingPlan:
    """How many samples per class and how they are drawn: the same noise for every model compared."""

    per_class: int = 100
    steps: int = 25
    guidance: float = 1.0
    seed: int = 0
    batch_size: int = 500
    clip: bool = False  # clip DDIM's x0 predictions to the data range (see ddim_sample)


@torch.no_grad()
def generate(model, classes, plan: SamplingPlan, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(samples in model space, their class labels): `plan.per_class` per class, noise fixed by `plan.seed`."""
    labels = torch.tensor([c for c in classes for _ in range(plan.per_class)], dtype=torch.long)
    generator = torch.Generator().manual_seed(plan.seed)
    module = unwrap(model)
    shape = (len(labels), module.spec.channels, module.spec.image_size, module.spec.image_size)
    noise = torch.randn(shape, generator=generator)
    out = [ddim_sample(module, labels[i:i + plan.batch_size].to(device), plan.steps, guidance=plan.guidance,
                       noise=noise[i:i + plan.batch_size], clip=plan.clip).cpu()
           for i in range(0, len(labels), plan.batch_size)]
    return torch.cat(out), labels
