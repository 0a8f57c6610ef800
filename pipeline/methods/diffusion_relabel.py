"""relabel (diffusion family): the anchored baseline for SAFEMax, SalUn's random-label forgetting for diffusion
models (Fan et al., ICLR 2024, without the saliency mask).

For a forgotten image x of class c, noised to any t, the model conditioned on c is trained to predict what the
frozen original predicts for a random other class c' ≠ c: ‖ε_θ(x_t, t, c) − ε_orig(x_t, t, c')‖². Sampling c
then draws digits of other classes (c is anchored to them) instead of noise. The retain term is the DDPM
objective on the other classes, as for SAFEMax, so the two differ only in the forget target.
"""

from __future__ import annotations

import torch

from pipeline.methods.diffusion_base import DiffusionUnlearning
from pipeline.models.diffusion_process import add_noise, gaussian, random_timesteps


class DiffusionRelabel(DiffusionUnlearning):
    name = "relabel"
    summary = "diffusion: the forgotten class is remapped to random other classes (SalUn-style, anchored)"
    needs_original = True

    def forget_targets(self, model, x0, labels, device):
        count = len(labels)
        t = random_timesteps(count, 0, self.num_timesteps, self.generator, device)
        x_t = add_noise(self.module, x0, t, gaussian(x0.shape, self.generator, device))
        # A shift of 1..C-1 never lands on the true class.
        other = (labels + torch.randint(1, self.num_classes, (count,), generator=self.generator).to(device)) \
            % self.num_classes
        with torch.no_grad():
            target = self.teacher(x_t, t, other) if count else x_t
        return x_t, t, labels, target
