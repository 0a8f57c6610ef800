"""Training a class-conditional DDPM (the original model, and the retrained-without-class gold model), and the
metrics classifier that judges its samples.

`DenoiserTraining` is a method of the shared loop (pipeline/methods/base.py) like `retrain`, so it gets the same
epochs, DDP steps, timing, per-epoch checkpoints and resume. Classifier-free guidance is optional at sampling
time: labels are replaced by the null class with probability `cfg_dropout` during training so the unconditional
model exists. The metrics classifier (pipeline/models/diffusion_classifier.py) is the `retrain` method on the
real images plus noise images for its "not a digit" class.
"""

from __future__ import annotations

import torch

from pipeline import distributed
from pipeline.distributed import unwrap
from pipeline.methods import create_method
from pipeline.methods.base import MethodReport, UnlearnData, UnlearningMethod
from pipeline.methods.retrain import reset_weights
from pipeline.models import Classifier, ModelSpec, build_model
from pipeline.models.diffusion import DiffusionSpec, build_diffusion_model, to_model_space
from pipeline.models.diffusion_process import denoising_loss, random_timesteps

CLASSIFIER_RECIPE = {"epochs": 10, "lr": 1e-3, "batch_size": 64, "log_every": 1000}
NOISE_PER_BATCH = 8  # "not a digit" images added to every training batch of the metrics classifier


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


def train_ddpm(spec: DiffusionSpec, train, device, seed: int = 0, settings: dict | None = None, model=None,
               on_epoch_end=None, resume=None, log=None) -> tuple[torch.nn.Module, MethodReport]:
    """A DDPM trained from scratch on `train` (all of train: the original; D_r: the retrained gold model).
    `model`: an already placed (possibly DDP-wrapped) model of `spec` to train instead of a new one."""
    torch.manual_seed(seed)
    model = model if model is not None else build_diffusion_model(spec).to(device)
    method = DenoiserTraining(settings, seed=seed, log=log)
    report = method.unlearn(model, None, UnlearnData(forget=train, retain=train, num_classes=spec.num_classes),
                            device, on_epoch_end=on_epoch_end, resume=resume)
    return model, report


class WithNoiseImages:
    """Every batch of `source` plus NOISE_PER_BATCH uint8 images of clipped Gaussian noise (mean 0.5, std drawn in
    [0.2, 0.6], what clipped model-space noise looks like in pixels), labelled `noise_label`. Seeded per pass."""

    def __init__(self, source, noise_label: int, seed: int):
        self.source, self.noise_label, self.seed = source, noise_label, seed

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0):
        generator = torch.Generator().manual_seed(self.seed * 7919 + seed)
        for batch in self.source.batches(batch_size, shuffle=shuffle, seed=seed):
            shape = (NOISE_PER_BATCH, *batch["image"].shape[1:])
            scale = 0.2 + 0.4 * torch.rand(NOISE_PER_BATCH, 1, 1, 1, generator=generator)
            noise = ((0.5 + scale * torch.randn(shape, generator=generator)).clamp(0, 1) * 255).round().to(torch.uint8)
            yield {**batch, "image": torch.cat([batch["image"], noise.to(batch["image"].device)]),
                   "label": torch.cat([batch["label"], torch.full((NOISE_PER_BATCH,), self.noise_label,
                                                                  dtype=batch["label"].dtype).to(batch["label"].device)]),
                   "sample_id": [*batch["sample_id"], *(["noise"] * NOISE_PER_BATCH)]}


def train_classifier(spec: ModelSpec, train, device, seed: int = 0, settings: dict | None = None,
                     on_epoch_end=None, resume=None) -> tuple[Classifier, object]:
    """A fresh `cnn` trained on `train` (a batch source of uint8 images at the spec's size); returns (model, report)."""
    torch.manual_seed(seed)
    model = build_model(spec).to(device)
    method = create_method("retrain", {**CLASSIFIER_RECIPE, **(settings or {})}, seed=seed, log=None)
    train = WithNoiseImages(train, noise_label=spec.num_classes - 1, seed=seed)
    report = method.unlearn(model, None, UnlearnData(forget=train, retain=train), device,
                            on_epoch_end=on_epoch_end, resume=resume)
    return model, report

