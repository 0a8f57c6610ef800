"""What the diffusion-family unlearning methods share: paired forget/retain batches, one forward pass per step,
and a retain term that is the plain DDPM objective on the retained classes. A method only says what the model
should predict for the forgotten class (`forget_targets`). `unlearn_ddpm` runs one by name and measures its peak
memory: the Ray Train loop (pipeline/train/diffusion_loop.py) and the tests call it alike. Nothing here knows
about Ray.
"""

from __future__ import annotations

import resource

import torch
import torch.nn.functional as F

from pipeline import distributed
from pipeline.distributed import unwrap
from pipeline.errors import ConfigError
from pipeline.methods import create_diffusion_method
from pipeline.methods.base import MethodReport, UnlearnData, UnlearningMethod
from pipeline.models.diffusion import to_model_space
from pipeline.models.diffusion_data import PairedSource
from pipeline.models.diffusion_process import add_noise, gaussian, random_timesteps


class DiffusionUnlearning(UnlearningMethod):
    # Every step: `batch_size` retained samples plus `forget_batch` forgotten ones; an epoch is `steps_per_epoch`
    # steps (so total steps = epochs x steps_per_epoch). GroupNorm only: no BatchNorm statistics to refresh.
    defaults = {"epochs": 5, "steps_per_epoch": 20, "lr": 1e-3, "batch_size": 64, "forget_batch": 32,
                "optimizer": "adam", "weight_decay": 0.0, "retain_weight": 1.0, "cfg_dropout": 0.1,
                "batchnorm_refresh_batches": 0, "log_every": 1000}

    def check(self, num_timesteps: int) -> None:
        """Settings that depend on the model (its number of timesteps): checked on the driver before Ray starts."""
        if float(self.config["retain_weight"]) < 0:
            raise ConfigError(f"{self.name}.retain_weight must be 0 or more, not {self.config['retain_weight']}")
        for key in ("steps_per_epoch", "forget_batch", "epochs", "batch_size"):
            if int(self.config[key]) < 1:
                raise ConfigError(f"{self.name}.{key} must be at least 1, not {self.config[key]}")

    def tie_guidance(self, evaluation_guidance: float | None) -> None:
        """Tie the method's guidance correction to the w the run evaluates at (a method with one overrides this;
        pipeline/methods/safemax.py). Called on the driver before anything runs."""

    def prepare(self, model, data, device):
        module = unwrap(model)
        self.check(module.num_timesteps)
        self.module = module  # the plain model: its noise schedule, and passes that must not go through DDP
        self.num_timesteps, self.null_class, self.num_classes = module.num_timesteps, module.null_class, data.num_classes
        self.generator = torch.Generator().manual_seed(self.seed * 1000 + 17 + distributed.rank())

    def train_source(self, data):
        return PairedSource(data.forget, data.retain, int(self.config["forget_batch"]),
                            int(self.config["steps_per_epoch"]))

    def forget_targets(self, model, x0: torch.Tensor, labels: torch.Tensor, device):
        """(x_t, t, labels to condition on, target ε) for the forgotten samples."""
        raise NotImplementedError

    def forget_weights(self, t: torch.Tensor) -> torch.Tensor | None:
        """Per-sample weights of the forget term at timesteps `t` (its mean is then E[w(t)·error]); None: a plain
        mean."""
        return None

    def loss(self, model, batch, device):
        x0 = to_model_space(batch["image"].to(device))
        labels = batch["label"].to(device)
        is_forget = batch["is_forget"].to(device)
        retain_x, retain_t, retain_labels, retain_target = self._retain_targets(x0[~is_forget], labels[~is_forget], device)
        forget_x, forget_t, forget_labels, forget_target = self.forget_targets(model, x0[is_forget], labels[is_forget],
                                                                               device)
        # One forward pass over both parts: DDP expects one forward per backward.
        prediction = model(torch.cat([forget_x, retain_x]), torch.cat([forget_t, retain_t]),
                           torch.cat([forget_labels, retain_labels]))
        errors = F.mse_loss(prediction, torch.cat([forget_target, retain_target]), reduction="none").flatten(1).mean(1)
        forgotten = len(forget_x)
        forget_errors = errors[:forgotten]
        weights = self.forget_weights(forget_t)
        if weights is not None:
            forget_errors = weights * forget_errors
        return _mean(forget_errors) + float(self.config["retain_weight"]) * _mean(errors[forgotten:])

    def _retain_targets(self, x0, labels, device):
        """The DDPM objective on retained samples, every timestep, with the training's label dropout (so the
        unconditional model, used by guidance, keeps being trained too)."""
        drop = torch.rand(len(labels), generator=self.generator).to(device) < float(self.config["cfg_dropout"])
        labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        t = random_timesteps(len(labels), 0, self.num_timesteps, self.generator, device)
        noise = gaussian(x0.shape, self.generator, device)
        return add_noise(self.module, x0, t, noise), t, labels, noise


def _mean(errors: torch.Tensor) -> torch.Tensor:
    """Mean, or a zero that keeps the graph when this worker's batch has no such sample."""
    return errors.mean() if len(errors) else errors.sum()


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
