"""The digits classifier the generation metrics use, trained by the project (never downloaded).

It has one class more than the data: "not a digit", trained on Gaussian noise images. A plain 10-way classifier
must call noise some digit, and which one is arbitrary: in the first bench run it called SAFEMax's noise a "3"
91 % of the time (forget-class accuracy 0.91 for samples with neighbour correlation 0.05), in the tests' run a
"3" 2 % of the time. With the reject class, noise counts as no digit at all, for every class alike.

It is the project's `cnn` (pipeline/models) at the DDPM's image size, trained with the `retrain` recipe on the
real training images (`train_classifier` in pipeline/methods/diffusion_training.py, which adds the noise
images), and saved as an ordinary classifier checkpoint. Its penultimate features (the pooled 256-d output of the
last conv block) are what the Fréchet distance compares: an FID proxy for data on which Inception's ImageNet
features would mean little and cannot be downloaded anyway.
"""

from __future__ import annotations

import torch

from pipeline.models import Classifier, ModelSpec

# The 8x8 digits' pixel statistics, from the dataset's metadata (mean 0.3, std 0.4).
DIGITS_MEAN, DIGITS_STD = [0.3], [0.4]


def classifier_spec(num_classes: int, channels: int, image_size: int) -> ModelSpec:
    """The metrics classifier for data of `num_classes` classes: one output more, the "not a digit" class."""
    return ModelSpec(name="cnn", num_classes=num_classes + 1, channels=channels, image_size=image_size,
                     mean=DIGITS_MEAN, std=DIGITS_STD)


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
