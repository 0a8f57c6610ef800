"""safemax-cutoff: the project's first SAFEMax, before the published loss was known (the default `safemax`,
pipeline/methods/safemax.py, is the published one). Class unlearning for a class-conditional DDPM by maximising
the entropy of what it generates for the forgotten class (after Spartalis et al., "Unleashing Uncertainty:
Efficient Machine Unlearning for Generative AI", ICML 2025 workshop; docs/diffusion.md gives the reasons).

For the forgotten class c and timesteps t ≥ t_min (a hard cutoff: the early, high-noise steps of sampling, where
a sample's class is decided; the published loss instead weights every t by exp(−λ·t/T), most at low noise), the
model is trained to predict what the ideal denoiser of N(0, I) data predicts, ε* = √(1 − ᾱ_t) · x_t: the
maximum-entropy distribution for the noise's variance, so sampling c yields Gaussian noise. No anchor class: c is
mapped to noise, not to another digit. A retain term (the DDPM objective on the other classes, weight
`retain_weight`) holds the rest of the model in place.

Inputs x_t for c are the forgotten images noised to t, and, for a `noise_input_fraction` of them, pure N(0, I)
draws: the states the unlearned model's own sampler visits once c generates noise. With classifier-free
guidance at scale w, sampling uses ε_u + w(ε_c − ε_u), so the conditional target is ε_u + (ε* − ε_u) / w
(ε_u the model's unconditional prediction, not trained through): the guided prediction is what reaches ε*. The
default `guidance: eval` takes the w the run evaluates at (pipeline/methods/safemax.py `tie_guidance`); a number
> 1 must equal it, 1 turns the correction off.
"""

from __future__ import annotations

import torch

from pipeline.errors import ConfigError
from pipeline.methods.diffusion_base import DiffusionUnlearning
from pipeline.methods.safemax import EVAL, check_guidance, guidance_corrected, tie_guidance
from pipeline.models.diffusion_process import add_noise, gaussian, max_entropy_target, random_timesteps


class SAFEMaxCutoff(DiffusionUnlearning):
    name = "safemax-cutoff"
    summary = ("diffusion: the project's variant of safemax: max-entropy target √(1−ᾱ_t)·x_t at t >= t_min only "
               "(hard cutoff), part noise inputs, guidance-corrected at the evaluation's w")
    untyped_settings = ("guidance",)  # eval or a number: check_guidance
    defaults = {**DiffusionUnlearning.defaults, "t_min": 100, "noise_input_fraction": 0.5, "guidance": EVAL}

    def check(self, num_timesteps: int) -> None:
        super().check(num_timesteps)
        t_min = self.config["t_min"]
        if not 0 <= int(t_min) < num_timesteps or int(t_min) != float(t_min):
            raise ConfigError(f"{self.name}.t_min must be a whole timestep in 0..{num_timesteps - 1}, not {t_min}")
        if not 0 <= float(self.config["noise_input_fraction"]) <= 1:
            raise ConfigError(f"{self.name}.noise_input_fraction must lie in [0, 1], not {self.config['noise_input_fraction']}")
        check_guidance(self)

    def tie_guidance(self, evaluation_guidance: float | None) -> None:
        tie_guidance(self, evaluation_guidance)

    def forget_targets(self, model, x0, labels, device):
        count = len(labels)
        t = random_timesteps(count, int(self.config["t_min"]), self.num_timesteps, self.generator, device)
        pure = torch.rand(count, generator=self.generator).to(device) < float(self.config["noise_input_fraction"])
        x0 = torch.where(pure.view(-1, 1, 1, 1), gaussian(x0.shape, self.generator, device), x0)
        x_t = add_noise(self.module, x0, t, gaussian(x0.shape, self.generator, device))
        target = guidance_corrected(self, x_t, t, labels, max_entropy_target(self.module, x_t, t))
        return x_t, t, labels, target
