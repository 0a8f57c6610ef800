"""unsir: UNSIR (Tarun et al., IEEE TNNLS 2023). Error-maximising noise, impair, repair.

1. Noise (prepare): for every class present in D_f, `noise_per_class` inputs
   that maximise the model's cross-entropy for that class, with the paper's L2
   penalty. As in the paper the noise lives in standardised input space: here
   standardised by D_f's own pixel mean and std (the model hides its own
   normalisation), so the noise starts in the data's intensity range.
2. Impair (the first `impair_epochs` epochs, high lr): train on D_r batches
   each joined by a chunk of noise labelled with its forget class, which wrecks
   the features the forget classes rely on.
3. Repair (the remaining epochs, `repair_lr`): train on D_r alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import distributed
from pipeline.distributed import unwrap
from pipeline.methods.base import UnlearnData, UnlearningMethod, to_device


class Unsir(UnlearningMethod):
    name = "unsir"
    summary = "error-maximising noise for the forget classes; impair (noise + D_r, high lr), then repair (D_r)"
    # Paper: noise Adam lr 0.1 for 5x8 steps with L2 weight 0.1; impair 1 epoch SGD lr 0.02;
    # repair 1 epoch lr 0.01. Measured on digits-hard (BatchNorm refreshed after each epoch):
    # the paper's SGD schedule ends at forget 0.43, retain 0.47, test 0.36; SGD impair 5e-3 with
    # two repair epochs at 1e-2 repairs D_f too (forget 1.00). Adam impair 1e-3, then three
    # repair epochs at 1e-4: forget 0.975, retain 0.985, test 0.736 (original 1.00/1.00/0.758).
    resumable_attributes = ("noise_cursor", "phase")
    defaults = {"epochs": 4, "impair_epochs": 1, "lr": 1e-3, "repair_lr": 1e-4, "batch_size": 64,
                "optimizer": "adam", "weight_decay": 0.0,
                "noise_per_class": 16, "noise_steps": 40, "noise_lr": 0.1, "noise_l2": 0.1, "noise_per_batch": 64}

    def prepare(self, model: nn.Module, data: UnlearnData, device: torch.device) -> None:
        classes, mean, std, image_shape = forget_set_statistics(data, device)
        generator = torch.Generator(device=device).manual_seed(self.seed)  # same noise on every worker
        self.noise_images, self.noise_labels = error_maximising_noise(
            unwrap(model), classes, mean, std, image_shape, int(self.config["noise_per_class"]),
            int(self.config["noise_steps"]), float(self.config["noise_lr"]), float(self.config["noise_l2"]),
            generator, device)
        self.noise_cursor = 0
        self.phase = "impair"

    def begin_epoch(self, epoch: int, model: nn.Module, data: UnlearnData, device: torch.device) -> bool:
        impairing = epoch < int(self.config["impair_epochs"])
        if not impairing and self.phase == "impair":
            # A fresh optimizer per phase, as in the paper: momentum built on the noise's huge
            # gradients would otherwise keep impairing through the first repair steps.
            self.optimizer.state.clear()
        self.phase = "impair" if impairing else "repair"
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.config["lr"] if impairing else self.config["repair_lr"])
        return True

    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        images, labels = to_device(batch, device)
        inputs = images.float() / 255.0 if images.dtype == torch.uint8 else images
        if self.phase == "impair":
            noise, noise_labels = self.next_noise_chunk(int(self.config["noise_per_batch"]))
            inputs, labels = torch.cat([inputs, noise]), torch.cat([labels, noise_labels])
        return F.cross_entropy(model(inputs), labels)

    def next_noise_chunk(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next `size` noise samples, cycling through the pool so every class's noise is used."""
        rows = (self.noise_cursor + torch.arange(size, device=self.noise_labels.device)) % len(self.noise_labels)
        self.noise_cursor = (self.noise_cursor + size) % len(self.noise_labels)
        return self.noise_images[rows], self.noise_labels[rows]

    def progress_extras(self) -> dict:
        return {"phase": getattr(self, "phase", "impair")}


def forget_set_statistics(data: UnlearnData, device: torch.device) -> tuple[list[int], torch.Tensor, torch.Tensor,
                                                                            tuple[int, ...]]:
    """Classes present in D_f, its per-channel pixel mean and std on the [0, 1] scale, and the image shape.

    Summed across workers; a worker may hold no forget sample at all.
    """
    present = torch.zeros(data.num_classes, dtype=torch.float64, device=device)
    shape = torch.zeros(3, dtype=torch.float64, device=device)
    moments = None  # per channel: count, sum, sum of squares
    for batch in data.forget.batches(256):
        images = batch["image"].to(device)
        pixels = (images.double() / 255.0 if images.dtype == torch.uint8 else images.double()).transpose(0, 1)
        pixels = pixels.flatten(1)
        batch_moments = torch.stack([torch.full_like(pixels[:, 0], pixels.shape[1]), pixels.sum(1),
                                     pixels.pow(2).sum(1)])
        moments = batch_moments if moments is None else moments + batch_moments
        present[batch["label"].to(device)] = 1
        shape = torch.tensor(images.shape[1:], dtype=torch.float64, device=device)
    distributed.all_reduce_max(present)
    distributed.all_reduce_max(shape)
    channels = int(shape[0])
    moments = moments if moments is not None else torch.zeros(3, channels, dtype=torch.float64, device=device)
    distributed.all_reduce_sum(moments)
    classes = [int(c) for c in torch.nonzero(present).flatten()]
    if not classes:
        raise ValueError("unsir: the forget set is empty on every worker")
    mean = moments[1] / moments[0]
    std = (moments[2] / moments[0] - mean.pow(2)).clamp_min(1e-12).sqrt()
    return classes, mean.float(), std.float(), tuple(int(n) for n in shape)


def error_maximising_noise(module: nn.Module, classes: list[int], mean: torch.Tensor, std: torch.Tensor,
                           image_shape: tuple[int, ...], per_class: int, steps: int, lr: float, l2: float,
                           generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] maximising CE(model(image), class) − l2·mean ‖z‖², image = mean + std·z (Adam on z)."""
    labels = torch.tensor(classes, device=device).repeat_interleave(per_class)
    standardised = torch.randn((len(labels), *image_shape), generator=generator, device=device).requires_grad_(True)
    mean, std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    optimizer = torch.optim.Adam([standardised], lr=lr)
    was_training = module.training
    module.eval()  # BatchNorm running statistics must not learn the noise
    for _ in range(steps):
        images = (mean + std * standardised).clamp(0.0, 1.0)
        penalty = l2 * standardised.pow(2).flatten(1).sum(1).mean()
        # Gradient for the noise only: the model's own .grad stays untouched.
        (standardised.grad,) = torch.autograd.grad(-F.cross_entropy(module(images), labels) + penalty,
                                                   [standardised])
        optimizer.step()
    module.train(was_training)
    return (mean + std * standardised.detach()).clamp(0.0, 1.0), labels
