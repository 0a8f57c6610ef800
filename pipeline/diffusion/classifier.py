"""The digits classifier the generation metrics use, trained by the project (never downloaded).

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


def classifier_spec(num_classes: int, channels: int, image_size: int) -> ModelSpec:
    return ModelSpec(name="cnn", num_classes=num_classes, channels=channels, image_size=image_size,
                     mean=DIGITS_MEAN, std=DIGITS_STD)


def train_classifier(spec: ModelSpec, train, device, seed: int = 0, settings: dict | None = None,
                     on_epoch_end=None, resume=None) -> tuple[Classifier, object]:
    """A fresh `cnn` trained on `train` (a batch source of uint8 images at the spec's size); returns (model, report)."""
    torch.manual_seed(seed)
    model = build_model(spec).to(device)
    method = create_method("retrain", {**CLASSIFIER_RECIPE, **(settings or {})}, seed=seed, log=None)
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
