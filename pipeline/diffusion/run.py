"""Plain (Ray-free) run functions of the diffusion family: train a DDPM, unlearn a class, evaluate, attack.

The Ray Train worker loop (pipeline/train/diffusion_loop.py) and the tests call the same functions; sources are
batch sources (TensorSource in process, the worker's shards under Ray).
"""

from __future__ import annotations

import copy
import resource
import time

import torch

from pipeline.diffusion.metrics import SamplingPlan, class_accuracies, evaluate_generation, generate
from pipeline.diffusion.model import DiffusionSpec, build_diffusion_model, to_model_space
from pipeline.diffusion.process import denoising_loss, random_timesteps
from pipeline.diffusion.training import DenoiserTraining
from pipeline.distributed import unwrap
from pipeline.methods import create_diffusion_method
from pipeline.methods.base import MethodReport, UnlearnData

ATTACK_STEPS = (10, 50, 100)


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


class PeakMemory:
    """Peak memory of a phase: CUDA's max allocated bytes on a GPU; on CPU the process's peak resident set
    (ru_maxrss, which includes everything loaded before, so compare CPU figures only between runs in one process
    layout)."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.megabytes, self.kind = torch.cuda.max_memory_allocated(self.device) / 2**20, "cuda_max_allocated"
        else:
            self.megabytes, self.kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"
        return False


def unlearn_ddpm(method_name: str, settings: dict | None, model, original, data: UnlearnData, device, seed: int = 0,
                 on_epoch_end=None, resume=None, log=None) -> tuple[MethodReport, dict]:
    """Run a diffusion-family method on `model` in place; returns (report, {peak_memory_mb, peak_memory_kind})."""
    method = create_diffusion_method(method_name, settings, seed=seed, log=log)
    torch.manual_seed(seed)
    with PeakMemory(device) as peak:
        report = method.unlearn(model, original, data, device, on_epoch_end=on_epoch_end, resume=resume)
    return report, {"peak_memory_mb": peak.megabytes, "peak_memory_kind": peak.kind}


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


def evaluate_ddpm(model, classifier, reference: torch.Tensor, forget_classes, num_classes: int, plan: SamplingPlan,
                  device, inception=None) -> dict:
    started = time.perf_counter()
    metrics = evaluate_generation(unwrap(model), classifier, reference, forget_classes, num_classes, plan, device,
                                  inception)
    metrics["eval_seconds"] = time.perf_counter() - started
    return metrics
