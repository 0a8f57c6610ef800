"""jit: JiT, zero-shot unlearning by Lipschitz regularisation (Foster et al., AAAI 2025). Reads only D_f.

A memorised sample sits on a sharp peak of the model's output: a small input
perturbation changes the output a lot. JiT smooths the model around each forget
sample by minimising the empirical Lipschitz ratio
‖f(x) − f(x′)‖₂ / ‖x − x′‖₂ over N noisy copies x′ = clamp(x + σ·ε, 0, 1),
one SGD step per D_f batch.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline import distributed
from pipeline.data.sources import BatchSource
from pipeline.methods.base import UnlearnData, UnlearningMethod
from pipeline.methods.batchnorm import batchnorm_input_moments, batchnorm_layers


class JiT(UnlearningMethod):
    name = "jit"
    summary = "zero-shot Lipschitz smoothing of the model around each forget sample; never reads D_r"
    needs_retain = False
    # Paper and reference code: N 25, σ 0.1, plain SGD lr 0.01, one pass. On digits-hard (one epoch of
    # batches of 8, forget seeds 3407/13/12) lr 1e-3 lowers the mean Lipschitz ratio on D_f from 1.35 to
    # 1.12-1.16 at a test cost of 0.016-0.022; lr 1e-2 costs 0.15-0.19 for less smoothing. No setting
    # lowered forget accuracy without lowering test accuracy more: on this data D_f is no sharper than
    # D_r (ratio 1.34 vs 1.36), so smoothing around D_f is smoothing around any training sample. See
    # tests/methods/test_jit.py.
    # BatchNorm: the running statistics must follow the new weights (JiT's cheapest way to flatten the
    # output is to shrink activations, which frozen statistics then turn into a constant function: lr 1e-3
    # ends predicting one class). They are not re-estimated from D_f, which is no sample of the training
    # data (a whole class, a handful of deletion ids): that alone "forgot" a class at lr 0 (class 3:
    # 1.00 -> 0.05, the other classes' test accuracy -0.09). `end_epoch` carries them over instead.
    defaults = {"epochs": 1, "lr": 1e-3, "batch_size": 8, "optimizer": "sgd", "momentum": 0.0,
                "weight_decay": 0.0, "copies": 25, "noise_std": 0.1}

    def prepare(self, model: nn.Module, data: UnlearnData, device: torch.device) -> None:
        # Distinct noise per worker: each holds different forget samples.
        self.noise = torch.Generator(device=device).manual_seed(self.seed * 1000 + distributed.rank())
        self.original_statistics = [(m.running_mean.clone(), m.running_var.clone()) for m in batchnorm_layers(model)]
        self.original_moments = self.forget_moments(model, data, device)

    def forget_moments(self, model: nn.Module, data: UnlearnData, device: torch.device):
        """BatchNorm input moments on D_f: always the same batches, so two models differ only by their weights."""
        batches = int(self.config.get("batchnorm_refresh_batches", 0))
        if batches <= 0:
            return []
        return batchnorm_input_moments(model, data.forget, device, int(self.config["batch_size"]), batches,
                                       seed=self.seed)[0]

    @torch.no_grad()
    def end_epoch(self, epoch: int, model: nn.Module, data: UnlearnData, device: torch.device) -> None:
        """Carry the original's running statistics over to the new weights, reading only D_f.

        Per channel, D_f's moments under the original (m0, v0) and the current weights (m1, v1) define the
        affine map x -> m1 + s (x - m0), s = sqrt(v1 / v0), that the weight change applied to this layer's
        input; the running statistics (over all the training data) go through the same map. A pure rescale
        of a channel is undone (exactly but for BatchNorm's eps), and unchanged weights leave the statistics
        exactly as they were, whatever D_f's class make-up.
        """
        current = self.forget_moments(model, data, device)
        for norm, (mean, var), (mean0, var0), (mean1, var1) in zip(
                batchnorm_layers(model), self.original_statistics, self.original_moments, current):
            scale = ((var1 + norm.eps) / (var0 + norm.eps)).sqrt()
            norm.running_mean.copy_(mean1 + scale * (mean - mean0))
            norm.running_var.copy_(scale ** 2 * var)

    def train_source(self, data: UnlearnData) -> BatchSource:
        return data.forget

    def step(self, model, optimizer, batch, weight, device) -> float:
        # The deployed function is the one to smooth: BatchNorm uses its running statistics, so the
        # N·B noisy copies neither shift them nor change f(x) through batch statistics.
        model.eval()
        return super().step(model, optimizer, batch, weight, device)

    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        images = batch["image"].to(device)
        clean = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        copies, sigma = int(self.config["copies"]), float(self.config["noise_std"])
        noise = torch.randn((copies, *clean.shape), generator=self.noise, device=device)
        perturbed = (clean.unsqueeze(0) + sigma * noise).clamp(0.0, 1.0)  # [N, B, C, H, W]
        # One forward pass over x and its copies. Gradients flow through f(x′) too: the reference
        # code detaches it, but then every step chases targets that the step itself moves, and on
        # digits-hard the ratio grew instead of shrinking.
        all_outputs = model(torch.cat([clean, perturbed.flatten(0, 1)]))
        outputs = all_outputs[: len(clean)]
        perturbed_outputs = all_outputs[len(clean):].view(copies, *outputs.shape)
        output_distance = (outputs.unsqueeze(0) - perturbed_outputs).flatten(2).norm(dim=2)  # [N, B]
        input_distance = (perturbed - clean.unsqueeze(0)).flatten(2).norm(dim=2).clamp_min(1e-12)
        return (output_distance / input_distance).mean()
