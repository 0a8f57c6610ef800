"""What a class-unlearned DDPM is judged on, from samples it generates:

- forget accuracy: the metrics classifier's accuracy on samples conditioned on the forgotten class(es) (chance
  is 1/num_classes; lower means the samples look like other digits, or like nothing);
- retain accuracy: the same on samples of every other class (should stay at the original model's);
- FID proxy: the Fréchet distance between the classifier's penultimate features of generated and real
  retained-class images (Inception weights cannot be downloaded here; `inception_fid` takes a local file);
- noise statistics of the samples: a model that generates Gaussian noise has per-pixel std ≈ 1 (the noise
  scale, in model space), mean ≈ 0 and no correlation between neighbouring pixels;
- the relearning attack: how fast a few real images of the forgotten class bring it back;
- leakage probes (`leakage`, issue 33): the share of null-label (unconditional) samples the classifier calls the
  forgotten class, and the same share for SDEdit-style generations started from real forgotten-class images
  noised to t_start = 0.5·T and denoised conditioned on the forgotten class and, separately, unconditionally.
  Compare them with the retrained model's: a retrained model never saw the class.

`flat_metrics` turns them into a record's flat entries (records.parquet flattens `metrics` one level deep), as
pipeline/metrics/summary.py does for the classifiers. The metrics classifier's features and predictions are in
pipeline/models/diffusion_classifier.py; the samples come from pipeline/models/diffusion_process.py.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from scipy import linalg

from pipeline.distributed import unwrap
from pipeline.models.diffusion import to_model_space, to_pixels
from pipeline.models.diffusion_classifier import features, predict
from pipeline.models.diffusion_process import (SamplingPlan, add_noise, ddim_from, ddim_sample, denoising_loss,
                                               generate, partial_timesteps, random_timesteps)

ATTACK_STEPS = (10, 50, 100)


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


SDEDIT_START = 0.5  # t_start / T for the SDEdit probe


def _forget_share(classifier, samples: torch.Tensor, forget_class: int) -> float:
    return float((predict(classifier, to_pixels(samples)) == forget_class).float().mean())


@torch.no_grad()
def leakage(model, classifier, forget_images: torch.Tensor, forget_class: int, plan: SamplingPlan, device,
            start: float = SDEDIT_START) -> dict[str, float]:
    """Does the forgotten class leak out by other routes than its label? Shares of samples the classifier calls
    `forget_class`:

    - `null_label`: `plan.per_class` samples with the null label (the unconditional model guidance uses; no
      guidance: it is the same network pass twice), from `plan.seed`'s noise;
    - `sdedit_conditional` / `sdedit_unconditional`: up to `plan.per_class` real forgotten-class images
      (`forget_images`, uint8 or [0, 1]), noised to t_start = round(start·(T−1)) with seeded noise, then denoised by DDIM at
      `plan.steps`' spacing, conditioned on `forget_class` at the plan's guidance / with the null label.
    """
    module = unwrap(model).to(device)
    classifier = classifier.cpu()
    null = torch.full((plan.per_class,), module.null_class, dtype=torch.long)
    generator = torch.Generator().manual_seed(plan.seed)
    shape = (plan.per_class, module.spec.channels, module.spec.image_size, module.spec.image_size)
    unconditional = ddim_sample(module, null.to(device), plan.steps, guidance=1.0,
                                noise=torch.randn(shape, generator=generator), clip=plan.clip).cpu()
    x0 = to_model_space(forget_images[:plan.per_class].to(device))
    t_start = round(start * (module.num_timesteps - 1))
    times = partial_timesteps(module.num_timesteps, plan.steps, t_start)
    t = torch.full((len(x0),), t_start, dtype=torch.long, device=device)
    x_t = add_noise(module, x0, t, torch.randn(x0.shape, generator=generator).to(device))
    labels = torch.full((len(x0),), forget_class, dtype=torch.long, device=device)
    conditional_edit = ddim_from(module, x_t, labels, times, plan.guidance, plan.clip).cpu()
    unconditional_edit = ddim_from(module, x_t, torch.full_like(labels, module.null_class), times, 1.0,
                                   plan.clip).cpu()
    return {"null_label": _forget_share(classifier, unconditional, forget_class),
            "sdedit_conditional": _forget_share(classifier, conditional_edit, forget_class),
            "sdedit_unconditional": _forget_share(classifier, unconditional_edit, forget_class),
            "sdedit_t_start": t_start}


def chance_level(num_classes: int) -> float:
    return 1.0 / num_classes


def evaluate_ddpm(model, classifier, reference: torch.Tensor, forget_classes, num_classes: int, plan: SamplingPlan,
                  device, inception=None, forget_images: torch.Tensor | None = None) -> dict:
    """`forget_images`: real images (uint8 or [0, 1]) of the (first) forgotten class: adds the `leakage` probes."""
    started = time.perf_counter()
    metrics = evaluate_generation(unwrap(model), classifier, reference, forget_classes, num_classes, plan, device,
                                  inception)
    if forget_images is not None and len(forget_images):
        metrics["leakage"] = leakage(model, classifier, forget_images, list(forget_classes)[0], plan, device)
    metrics["eval_seconds"] = time.perf_counter() - started
    return metrics


def real_retained_pixels(sources, forget_classes) -> torch.Tensor:
    """Held-out real images (val + test) of the retained classes, in [0, 1]: the FID proxy's reference."""
    images = torch.cat([sources[name].images for name in sources])
    labels = torch.cat([sources[name].labels for name in sources])
    keep = ~torch.isin(labels, torch.tensor(list(forget_classes), dtype=torch.long))
    return images[keep].float() / 255.0


def relearning_attack(model, forget_images: torch.Tensor, forget_class: int, classifier, plan: SamplingPlan,
                      device, checkpoints=ATTACK_STEPS, lr: float = 1e-3, seed: int = 0) -> dict[str, float]:
    """Fine-tune a copy of `model` on a few real images of the forgotten class (the DDPM objective, every step on
    all of them) and report the classifier's accuracy on that class's samples after each of `checkpoints` steps.

    The attacker's recipe is the original training's (Adam, lr 1e-3 ≈ its 2e-3 halved for fine-tuning, label
    dropout off: the attacker wants the conditional model back). A model that truly lost the class needs as many
    steps as the retrained one; one that only hid it comes back at once.
    """
    attacked = copy.deepcopy(unwrap(model)).to(device).train()
    optimizer = torch.optim.Adam(attacked.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    x0 = to_model_space(forget_images.to(device))
    labels = torch.full((len(x0),), forget_class, dtype=torch.long, device=device)
    recovered, done = {"0": _class_accuracy(attacked, forget_class, classifier, plan, device)}, 0
    for target in sorted(checkpoints):
        for _ in range(target - done):
            t = random_timesteps(len(x0), 0, attacked.num_timesteps, generator, device)
            optimizer.zero_grad(set_to_none=True)
            denoising_loss(attacked, x0, labels, t, generator).backward()
            optimizer.step()
        done = target
        recovered[str(target)] = _class_accuracy(attacked, forget_class, classifier, plan, device)
    return recovered


def _class_accuracy(model, forget_class: int, classifier, plan: SamplingPlan, device) -> float:
    samples, labels = generate(model, [forget_class], plan, device)
    return class_accuracies(classifier, samples, labels)[forget_class]


# The poster's columns, in order (pipeline/results/tables.py renders them).
POSTER_METRICS = ("gen_acc_forget", "gen_acc_retain", "fid_proxy", "unlearn_minutes", "peak_memory_mb")


def flat_metrics(evaluation: dict, run_result: dict | None = None) -> dict:
    """Scalars only: generation accuracies, FID proxy (and Inception FID), noise statistics, the relearning
    attack's curve, time and memory of the run that made the model."""
    out = {"gen_acc_forget": evaluation["acc_forget_gen"], "gen_acc_retain": evaluation["acc_retain_gen"],
           "fid_proxy": evaluation["fid_proxy"], "fid_inception": evaluation.get("fid_inception"),
           "samples_per_class": evaluation["samples_per_class"], "sampling_steps": evaluation["sampling_steps"],
           "guidance": evaluation["guidance"]}
    out.update({f"gen_acc_class_{c}": value for c, value in evaluation["acc_gen_per_class"].items()})
    for part in ("forget", "retain"):
        out.update({f"{part}_{key}": value for key, value in evaluation[f"noise_{part}"].items()})
    out.update({f"relearn_acc_{steps}": value for steps, value in evaluation.get("relearn", {}).items()})
    out.update({f"leak_{key}": value for key, value in evaluation.get("leakage", {}).items()})
    if run_result:
        seconds = run_result.get("unlearn_seconds")
        out["unlearn_minutes"] = seconds / 60 if seconds is not None else None
        out["peak_memory_mb"] = run_result.get("peak_memory_mb")
        out["peak_memory_kind"] = run_result.get("peak_memory_kind")
    return out
