"""safemax: SAFEMax as published (Spartalis et al., "Unleashing Uncertainty: Efficient Machine Unlearning for
Generative AI", ICML 2025 workshop poster; arXiv 2508.20773). Class unlearning for a class-conditional DDPM by
making the forgotten class c_f generate noise, with a loss weighted towards the low-noise steps:

    L_f = E_{t, ε} [ ψ(t) · ‖target − ε_θ(x_t, c_f, t)‖² ],   ψ(t) = exp(−decay · t / T),   t ~ U{0, …, T−1}

x_t is a forgotten image noised to t with ε. `decay` is the paper's λ (default 1; the paper ablates 0, 1, 50,
100): 0 weights every t alike, a larger value puts the weight on the low-noise steps (ψ(0) = 1, the largest; the
paper's "semantically rich early diffusion steps"). ψ is not renormalised, as in the formula: a large λ also
shrinks the forget term against the retain term.

`target` chooses what the model is taught to predict for c_f:
- "noise" (default, the paper's ε_T): a fresh N(0, I) draw independent of x_t. The minimiser of
  E‖ε_T − f‖² is f = E[ε_T] = 0: the model learns to predict zero noise for c_f, so DDIM's x0 estimate is
  x_t / √ᾱ_t, the starting noise scaled up (and clipped to the data range): c_f draws high-contrast noise.
- "max_entropy" (the project's, as in safemax-cutoff): √(1 − ᾱ_t) · x_t, the exact denoiser of N(0, I) data
  (the maximum-entropy distribution for the noise's variance), so sampling c_f yields Gaussian noise.

`guidance` w > 1 trains the guidance-corrected target ε_u + (target − ε_u) / w instead (ε_u the model's
unconditional prediction, not trained through), so that the guided prediction ε_u + w(ε_c − ε_u) is what reaches
the target's minimiser (0 for "noise", √(1 − ᾱ_t) · x_t for "max_entropy") when sampling at that w. The default,
1, is the paper's loss (no correction, never tied to the evaluation). The correction is exact only at the w it was
trained for, so it is tied to the run's evaluation (`tie_guidance`, called by pipeline/runs/diffusion.py before
anything runs): `guidance: eval` takes the evaluation's w, a number > 1 must equal it (else ConfigError). A retain term (the DDPM objective on the other classes, weight
`retain_weight`, pipeline/methods/diffusion_base.py) holds the rest of the model in place.
"""

from __future__ import annotations

import math

import torch

from pipeline.errors import ConfigError
from pipeline.methods.diffusion_base import DiffusionUnlearning
from pipeline.models.diffusion_process import add_noise, gaussian, max_entropy_target, random_timesteps

TARGETS = ("noise", "max_entropy")


def timestep_weights(t: torch.Tensor, decay: float, num_timesteps: int) -> torch.Tensor:
    """ψ(t) = exp(−decay · t / T): 1 at t = 0, falling with t when decay > 0, 1 everywhere when decay = 0."""
    return torch.exp(-float(decay) * t.float() / num_timesteps)


EVAL = "eval"  # `guidance: eval`: the evaluation's guidance scale, filled in by the run (tie_guidance)


def tie_guidance(method: DiffusionUnlearning, evaluation_guidance: float | None) -> None:
    """Tie a guidance correction to the w the run evaluates (samples) at, before any compute.

    guidance 1: no correction (the paper's loss), left alone at any w. `eval`: becomes the evaluation's w. A number
    > 1 that differs from the evaluation's w is refused: the correction would be exact at a w nobody samples at.
    `evaluation_guidance` None: no evaluation known (a method used outside a run); `eval` is then refused by check.
    """
    guidance = method.config["guidance"]
    if evaluation_guidance is None:
        return
    w = float(evaluation_guidance)
    if guidance == EVAL:
        method.config["guidance"] = w
        return
    try:
        trained = float(guidance)
    except (TypeError, ValueError):
        return  # check() names the bad value
    if trained != 1.0 and trained != w:
        raise ConfigError(
            f"{method.name}.guidance={trained:g} trains the forget target's guidance correction for sampling at "
            f"w={trained:g}, but this run evaluates at guidance w={w:g}; the correction is exact only at the w it "
            f"was trained for. Set {method.name}.guidance=eval (or {w:g}) to train for the evaluation's w, evaluate "
            f"at w={trained:g} (unlearn run: --guidance {trained:g}; bench config: evaluation.guidance: {trained:g}), "
            f"or set {method.name}.guidance=1 for no correction")


def check_guidance(method: DiffusionUnlearning) -> None:
    guidance = method.config["guidance"]
    if guidance == EVAL:
        raise ConfigError(f"{method.name}.guidance=eval takes the evaluation's guidance scale, which only a run knows "
                          f"(unlearn run --family diffusion, unlearn bench); outside one set a number (1: no correction)")
    try:
        value = float(guidance)
    except (TypeError, ValueError):
        raise ConfigError(f"{method.name}.guidance must be eval or a number of at least 1, not {guidance!r}") from None
    if not math.isfinite(value) or value < 1:
        raise ConfigError(f"{method.name}.guidance must be at least 1, not {guidance}")


def guidance_corrected(method: DiffusionUnlearning, x_t, t, labels, target):
    """The conditional target that makes the guided prediction at scale `guidance` reach `target` (itself at w=1)."""
    guidance = float(method.config["guidance"])
    if guidance != 1.0 and len(labels):
        with torch.no_grad():
            unconditional = method.module(x_t, t, torch.full_like(labels, method.null_class))
        target = unconditional + (target - unconditional) / guidance
    return target


class SAFEMax(DiffusionUnlearning):
    name = "safemax"
    summary = ("diffusion: SAFEMax as published: every t weighted by ψ(t) = exp(−decay·t/T), the forgotten class "
               "taught to predict fresh noise ε_T (target: noise) or √(1−ᾱ_t)·x_t (target: max_entropy)")
    untyped_settings = ("guidance",)  # eval or a number: check_guidance
    defaults = {**DiffusionUnlearning.defaults, "decay": 1.0, "target": "noise", "guidance": 1.0}

    def check(self, num_timesteps: int) -> None:
        super().check(num_timesteps)
        decay = float(self.config["decay"])
        if not math.isfinite(decay) or decay < 0:
            raise ConfigError(f"{self.name}.decay (the paper's λ in ψ(t) = exp(−λ·t/T)) must be 0 or more, "
                              f"not {self.config['decay']}")
        if self.config["target"] not in TARGETS:
            raise ConfigError(f"{self.name}.target must be one of {', '.join(TARGETS)} (noise: the paper's ε_T, "
                              f"max_entropy: √(1−ᾱ_t)·x_t), not {self.config['target']!r}")
        check_guidance(self)

    def tie_guidance(self, evaluation_guidance: float | None) -> None:
        tie_guidance(self, evaluation_guidance)

    def forget_targets(self, model, x0, labels, device):
        t = random_timesteps(len(labels), 0, self.num_timesteps, self.generator, device)
        x_t = add_noise(self.module, x0, t, gaussian(x0.shape, self.generator, device))
        if self.config["target"] == "noise":
            target = gaussian(x0.shape, self.generator, device)  # ε_T: drawn apart from the noise in x_t
        else:
            target = max_entropy_target(self.module, x_t, t)
        return x_t, t, labels, guidance_corrected(self, x_t, t, labels, target)

    def forget_weights(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_weights(t, self.config["decay"], self.num_timesteps)
