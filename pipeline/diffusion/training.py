"""Training a class-conditional DDPM (the original model, and the retrained-without-class gold model).

A method of the shared loop (pipeline/methods/base.py) like `retrain`, so it gets the same epochs, DDP steps,
timing, per-epoch checkpoints and resume. Classifier-free guidance is optional at sampling time: labels are
replaced by the null class with probability `cfg_dropout` during training so the unconditional model exists.
"""

from __future__ import annotations

import torch

from pipeline import distributed
from pipeline.diffusion.model import to_model_space
from pipeline.diffusion.process import denoising_loss, random_timesteps
from pipeline.distributed import unwrap
from pipeline.methods.base import UnlearningMethod
from pipeline.methods.retrain import reset_weights


class DenoiserTraining(UnlearningMethod):
    name = "ddpm"
    summary = "train a class-conditional DDPM from scratch on the retain set (all of train for the original)"
    # Adam 2e-3 with batch 64 reached readable digits in ~40 epochs at 16x16 (docs/diffusion.md); no EMA of the
    # weights: it helps sample quality but doubles what a checkpoint and a DDP worker hold.
    defaults = {"epochs": 40, "lr": 2e-3, "batch_size": 64, "optimizer": "adam", "weight_decay": 0.0,
                "batchnorm_refresh_batches": 0, "cfg_dropout": 0.1, "log_every": 1000}

    def prepare(self, model, data, device):
        reset_weights(unwrap(model), self.seed)
        # One stream per worker: noise and timesteps must differ between workers' batches.
        self.generator = torch.Generator().manual_seed(self.seed * 1000 + distributed.rank())
        self.null_class = unwrap(model).null_class
        self.num_timesteps = unwrap(model).num_timesteps

    def loss(self, model, batch, device):
        x0 = to_model_space(batch["image"].to(device))
        labels = batch["label"].to(device)
        drop = torch.rand(len(labels), generator=self.generator).to(device) < float(self.config["cfg_dropout"])
        labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        t = random_timesteps(len(labels), 0, self.num_timesteps, self.generator, device)
        return denoising_loss(model, x0, labels, t, self.generator)
