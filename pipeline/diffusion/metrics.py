"""What a class-unlearned DDPM is judged on, from samples it generates:

- forget accuracy: the metrics classifier's accuracy on samples conditioned on the forgotten class(es) (chance
  is 1/num_classes; lower means the samples look like other digits, or like nothing);
- retain accuracy: the same on samples of every other class (should stay at the original model's);
- FID proxy: the Fréchet distance between the classifier's penultimate features of generated and real
  retained-class images (Inception weights cannot be downloaded here; `inception_fid` takes a local file);
- noise statistics of the samples: a model that generates Gaussian noise has per-pixel std ≈ 1 (the noise
  scale, in model space), mean ≈ 0 and no correlation between neighbouring pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import linalg

from pipeline.diffusion.classifier import features, predict
from pipeline.diffusion.model import to_pixels
from pipeline.diffusion.process import ddim_sample
from pipeline.distributed import unwrap


@dataclass(frozen=True)
class SamplingPlan:
    """How many samples per class and how they are drawn: the same noise for every model compared."""

    per_class: int = 100
    steps: int = 25
    guidance: float = 1.0
    seed: int = 0
    batch_size: int = 500
    clip: bool = False  # clip DDIM's x0 predictions to the data range (see pipeline/diffusion/process.py)


@torch.no_grad()
def generate(model, classes, plan: SamplingPlan, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(samples in model space, their class labels): `plan.per_class` per class, noise fixed by `plan.seed`."""
    labels = torch.tensor([c for c in classes for _ in range(plan.per_class)], dtype=torch.long)
    generator = torch.Generator().manual_seed(plan.seed)
    module = unwrap(model)
    shape = (len(labels), module.spec.channels, module.spec.image_size, module.spec.image_size)
    noise = torch.randn(shape, generator=generator)
    out = [ddim_sample(module, labels[i:i + plan.batch_size].to(device), plan.steps, guidance=plan.guidance,
                       noise=noise[i:i + plan.batch_size], clip=plan.clip).cpu()
           for i in range(0, len(labels), plan.batch_size)]
    return torch.cat(out), labels


def noise_statistics(samples: torch.Tensor) -> dict[str, float]:
    """Per-pixel std over samples (averaged over pixels), overall mean, and the correlation of horizontal
    neighbours: (≈1, ≈0, ≈0) for N(0, I) noise; digits have a near-constant background and smooth strokes."""
    flat = samples.flatten(1).double()
    left, right = samples[..., :-1].flatten().double(), samples[..., 1:].flatten().double()
    correlation = torch.corrcoef(torch.stack([left, right]))[0, 1]
    return {"pixel_std": float(flat.std(dim=0).mean()), "pixel_mean": float(flat.mean()),
            "neighbour_correlation": float(correlation)}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½), as FID computes it (Heusel et al., 2017)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(root).all():  # singular product: FID's own fix, a small offset on the diagonal
        offset = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def class_accuracies(classifier, samples: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    predictions = predict(classifier, to_pixels(samples))
    return {int(c): float((predictions[labels == c] == c).float().mean()) for c in labels.unique()}


def evaluate_generation(model, classifier, real_retained: torch.Tensor, forget_classes, num_classes: int,
                        plan: SamplingPlan, device, inception=None) -> dict:
    """The metrics of one model. `real_retained`: real images ([0, 1]) of the retained classes (held-out splits).

    `inception`: an `InceptionFeatures` (a user's local weights file) adds `fid_inception`.
    """
    classifier = classifier.to(device)
    samples, labels = generate(model, range(num_classes), plan, device)
    per_class = class_accuracies(classifier.cpu(), samples, labels)
    forgotten = torch.isin(labels, torch.tensor(list(forget_classes), dtype=torch.long))
    retained_pixels = to_pixels(samples[~forgotten])
    metrics = {
        "acc_forget_gen": float(np.mean([per_class[c] for c in forget_classes])),
        "acc_retain_gen": float(np.mean([v for c, v in per_class.items() if c not in forget_classes])),
        "acc_gen_per_class": {str(c): v for c, v in per_class.items()},
        "fid_proxy": frechet_distance(features(classifier.cpu(), retained_pixels).numpy(),
                                      features(classifier.cpu(), real_retained).numpy()),
        "noise_forget": noise_statistics(samples[forgotten]),
        "noise_retain": noise_statistics(samples[~forgotten]),
        "samples_per_class": plan.per_class, "sampling_steps": plan.steps, "guidance": plan.guidance,
    }
    if inception is not None:
        metrics["fid_inception"] = frechet_distance(inception(retained_pixels), inception(real_retained))
    return metrics


def chance_level(num_classes: int) -> float:
    return 1.0 / num_classes
