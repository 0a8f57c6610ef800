"""The digits classifier the generation metrics use, trained by the project (never downloaded).

It has one class more than the data: "not a digit", trained on Gaussian noise images. A plain 10-way classifier
must call noise some digit, and which one is arbitrary: in the first bench run it called SAFEMax's noise a "3"
91 % of the time (forget-class accuracy 0.91 for samples with neighbour correlation 0.05), in the tests' run a
"3" 2 % of the time. With the reject class, noise counts as no digit at all, for every class alike.

It is the project's `cnn` (pipeline/models) at the DDPM's image size, trained with the `retrain` recipe on the
real training images, and saved as an ordinary classifier checkpoint. Its penultimate features (the pooled
256-d output of the last conv block) are what the Fréchet distance compares: an FID proxy for data on which
Inception's ImageNet features would mean little and cannot be downloaded anyway.
"""

from __future__ import annotations

import torch

from pipeline.methods import create_method
from pipeline.methods.accuracy import accuracy
from pipeline.methods.base import UnlearnData
from pipeline.models import Classifier, ModelSpec, build_model

# The 8x8 digits' pixel statistics, from the dataset's metadata (mean 0.3, std 0.4).
DIGITS_MEAN, DIGITS_STD = [0.3], [0.4]
CLASSIFIER_RECIPE = {"epochs": 10, "lr": 1e-3, "batch_size": 64, "log_every": 1000}


NOISE_PER_BATCH = 8  # "not a digit" images added to every training batch


def classifier_spec(num_classes: int, channels: int, image_size: int) -> ModelSpec:
    """The metrics classifier for data of `num_classes` classes: one output more, the "not a digit" class."""
    return ModelSpec(name="cnn", num_classes=num_classes + 1, channels=channels, image_size=image_size,
                     mean=DIGITS_MEAN, std=DIGITS_STD)


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


def test_accuracy(model: Classifier, source, device) -> float:
    return accuracy(model, source, device)


@torch.no_grad()
def predict(classifier: Classifier, pixels: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted labels for [0, 1] images."""
    classifier.eval()
    return torch.cat([classifier(pixels[i:i + batch_size]).argmax(dim=1) for i in range(0, len(pixels), batch_size)])


@torch.no_grad()
def features(classifier: Classifier, pixels: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The classifier's penultimate features (what its linear head reads) for [0, 1] images."""
    classifier.eval()
    backbone = classifier.backbone
    out = []
    for start in range(0, len(pixels), batch_size):
        x = (pixels[start:start + batch_size] - classifier.mean) / classifier.std
        out.append(torch.flatten(backbone.pool(backbone.features(x)), 1))
    return torch.cat(out)
