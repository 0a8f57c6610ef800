"""The loop every unlearning method shares: epochs, batches, optimizer, timing, progress, checkpoints.

Beside it: the teacher and its output cache (teacher.py), BatchNorm statistics (batchnorm.py), accuracy
(accuracy.py), and the DDP step pairing and `unwrap` (pipeline/distributed.py).

A method overrides only what differs: usually `loss(batch)`, sometimes the
batches it trains on (`train_source`), a pre-pass (`prepare`), an epoch hook
(`begin_epoch`), or the whole `unlearn` when it has no loop at all (SSD).
Methods know nothing about Ray: sources are plain iterables of dict batches and
cross-worker sums go through `pipeline.distributed`.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from pipeline import distributed
from pipeline.data.sources import BatchSource
from pipeline.distributed import synchronized, unwrap
from pipeline.errors import DivergedError
from pipeline.methods.batchnorm import StepStatistics, batchnorm_layers, refresh_batchnorm_statistics
from pipeline.methods.teacher import FrozenOutputs, frozen_copy


@dataclass
class UnlearnData:
    """What a method may read. `retain` is D_r or the seeded subset the method asked for (`retain_fraction`)."""

    forget: BatchSource
    retain: BatchSource
    mixed: BatchSource | None = None  # forget ∪ retain, with an `is_forget` flag per sample
    unseen: BatchSource | None = None
    num_classes: int = 10
    forget_classes: tuple[int, ...] = ()


@dataclass
class MethodReport:
    epochs_run: int = 0
    unlearn_seconds: float = 0.0  # the method's own work: not the epoch callbacks below
    epoch_report_seconds: float = 0.0  # in `on_epoch_end`: checkpoints, reports to Ray, a sweep's evaluations
    history: list[dict] = field(default_factory=list)


def pay_one_time_import_costs() -> None:
    """Trigger the lazy imports a process pays once, before a method's clock starts.

    torch imports torch._dynamo on the first optimizer built in a process (2.6 s on a 2-core
    machine): inside the timed region it made a 1-epoch method look seconds slower, and a
    short method's time against retrain's larger than the work behind it.
    """
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)


class UnlearningMethod:
    """Base class. Subclasses set `name`, `summary`, `defaults` and override `loss` (or more)."""

    name = "base"
    summary = ""
    defaults: dict = {"epochs": 1, "lr": 1e-3, "batch_size": 64, "optimizer": "sgd", "momentum": 0.9,
                      "weight_decay": 5e-4, "log_every": 50,
                      "amp": None,  # "bf16": bf16 autocast on CUDA (ignored on CPU)
                      # Not in the papers: re-estimate BatchNorm statistics from this many training batches after
                      # each epoch (see refresh_batchnorm_statistics); 0 keeps the lagging running statistics.
                      "batchnorm_refresh_batches": 50}
    needs_original = False  # the frozen original model is passed as `self.teacher`
    needs_retain = True  # False only for methods that must never read D_r (JiT)
    resumable_attributes: tuple[str, ...] = ()  # state carried from one epoch to the next (UNSIR's phase)

    def __init__(self, config: dict | None = None, seed: int = 0, log: Callable[[str], None] | None = print):
        self.config = {**UnlearningMethod.defaults, **type(self).defaults, **(config or {})}
        self.seed = seed
        self.log = log if (log and distributed.rank() == 0) else (lambda message: None)
        self.teacher: nn.Module | None = None
        self.epoch = 0

    # ---- what a method may override -------------------------------------------------------
    @property
    def retain_fraction(self) -> float:
        return float(self.config.get("retain_fraction", 1.0))

    def prepare(self, model: nn.Module, data: UnlearnData, device: torch.device) -> None:
        """A pre-pass before the first epoch (Fisher, noise, masks, acc_u)."""

    def begin_epoch(self, epoch: int, model: nn.Module, data: UnlearnData, device: torch.device) -> bool:
        """Return False to stop before this epoch (early stopping)."""
        return True

    def train_source(self, data: UnlearnData) -> BatchSource:
        return data.retain

    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define loss() or override unlearn()")

    def end_epoch(self, epoch: int, model: nn.Module, data: UnlearnData, device: torch.device) -> None:
        """Runs after an epoch's last step, before `on_epoch_end`, so per-epoch metrics, checkpoints, the next
        epoch's decisions (LoTUS's acc_f) and the result all see BatchNorm statistics that fit the weights."""
        batches = int(self.config.get("batchnorm_refresh_batches", 0))
        step_statistics, self._step_statistics = getattr(self, "_step_statistics", None), None
        if step_statistics is not None:
            if step_statistics.finish():  # the epoch's training forwards were the refresh
                return
        if batches > 0:
            refresh_batchnorm_statistics(model, self.train_source(data), device, int(self.config["batch_size"]),
                                         batches, seed=self.seed * 1000 + 500 + epoch)

    def start_step_statistics(self, model: nn.Module) -> None:
        """With `batchnorm_refresh_from: steps` (and a refresh asked for, in one process, on a model with
        BatchNorm): this epoch's training forwards become the refresh (StepStatistics), `end_epoch` makes no pass."""
        self._step_statistics = None
        if (self.config.get("batchnorm_refresh_from", "pass") == "steps"
                and int(self.config.get("batchnorm_refresh_batches", 0)) > 0
                and not distributed.is_distributed() and batchnorm_layers(model)):
            self._step_statistics = StepStatistics(model).start()

    def after_backward(self, model: nn.Module) -> None:
        """Runs between backward and optimizer step (SalUn masks gradients here)."""

    def progress_extras(self) -> dict:
        """Extra values to show in progress lines and epoch history (LoTUS's tau)."""
        return {}

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        kind, lr, wd = self.config["optimizer"], float(self.config["lr"]), float(self.config["weight_decay"])
        if kind == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=float(self.config["momentum"]), weight_decay=wd)
        if kind == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=wd)
        if kind == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
        raise ValueError(f"{self.name}: unknown optimizer {kind!r} (sgd, adam, adamw)")

    # ---- the shared loop ------------------------------------------------------------------
    def autocast(self, device: torch.device):
        if device.type == "cuda" and self.config.get("amp") == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict, weight: float,
             device: torch.device) -> float:
        optimizer.zero_grad(set_to_none=True)
        with self.autocast(device):
            loss = self.loss(model, batch, device)
        (loss * weight).backward()
        self.after_backward(model)
        optimizer.step()
        return float(loss.detach())

    def unlearn(self, model: nn.Module, original: nn.Module | None, data: UnlearnData, device: torch.device,
                on_epoch_end: Callable[[int, nn.Module, dict], None] | None = None,
                resume: dict | None = None) -> MethodReport:
        """Run the method on `model` in place. Timing covers the method's work only, barriers at both ends.

        `resume` ({"epoch", "model", "optimizer", "method_state"} from the last checkpoint) restores the state
        after the method's pre-pass, so a restarted run continues with the epoch after the checkpointed one
        exactly as the uninterrupted run did (same weights to the bit on CPU).
        """
        if self.needs_original:
            self.teacher = frozen_copy(original if original is not None else model).to(device)
            # Methods that ask the teacher about the same samples every epoch set `teacher_cache_mb`: memory on the
            # model's device for its outputs per sample (FrozenOutputs); without it nothing is stored.
            cache_bytes = int(float(self.config.get("teacher_cache_mb", 0)) * 1024**2)
            self.teacher_outputs = FrozenOutputs(self.teacher, cache_bytes)
        report = MethodReport()
        pay_one_time_import_costs()
        distributed.barrier()
        started = time.perf_counter()
        restore_layout = self.use_channels_last(model)
        self.prepare(model, data, device)
        self.optimizer = self.make_optimizer(model)
        start_epoch = 0
        if resume:
            unwrap(model).load_state_dict(resume["model"])
            if resume.get("optimizer"):
                self.optimizer.load_state_dict(resume["optimizer"])
            if resume.get("method_state"):
                self.restore_state(resume["method_state"])
            start_epoch = int(resume["epoch"]) + 1
            report.epochs_run = start_epoch  # epochs done in all: the record of a resumed run counts them too
            self.log(f"[{self.name}] resuming after epoch {start_epoch}")
        epochs = int(self.config["epochs"])
        for epoch in range(start_epoch, epochs):
            self.epoch = epoch
            if not self.begin_epoch(epoch, model, data, device):
                self.log(f"[{self.name}] early stop before epoch {epoch + 1}/{epochs} {self._extras_text()}")
                break
            self.start_step_statistics(model)
            mean_loss = self._run_epoch(model, data, device, epoch, epochs)
            self.end_epoch(epoch, model, data, device)
            self.check_finite(model, epoch, mean_loss)
            entry = {"epoch": epoch, "loss": mean_loss, **self.progress_extras()}
            report.history.append(entry)
            report.epochs_run += 1
            self.log(f"[{self.name}] epoch {epoch + 1}/{epochs} done: loss {mean_loss:.4f} {self._extras_text()}")
            if on_epoch_end:
                # Checkpoint writes and a sweep's per-epoch evaluation are not the method's work: timed apart,
                # or a run that checkpoints (a gold model) would look slower than one that does not (a bench run).
                callback_started = time.perf_counter()
                on_epoch_end(epoch, model, entry)
                report.epoch_report_seconds += time.perf_counter() - callback_started
        self.finish(model, data, device)
        restore_layout()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        distributed.barrier()
        report.unlearn_seconds = time.perf_counter() - started - report.epoch_report_seconds
        return report

    def use_channels_last(self, model: nn.Module) -> Callable[[], None]:
        """With `channels_last`: the model (and the teacher) in channels_last memory format for the run; returns
        what puts the caller's model back in the format it came in. On CPU (oneDNN) a conv net's step is about
        twice as fast so (max pooling and the convolutions' backward most of all). Not under DDP, whose gradient
        buckets were laid out for the weights as they were (place the model before wrapping: `--channels-last`)."""
        if not self.config.get("channels_last") or unwrap(model) is not model:
            return lambda: None
        if self.teacher is not None:
            self.teacher.to(memory_format=torch.channels_last)
        weights = [p for p in model.parameters() if p.dim() == 4]
        if not weights or all(p.is_contiguous(memory_format=torch.channels_last) for p in weights):
            return lambda: None
        model.to(memory_format=torch.channels_last)
        return lambda: model.to(memory_format=torch.contiguous_format)

    def resume_state(self) -> dict:
        """What the next epoch depends on besides weights and optimizer, for a resume equal to no interruption:
        torch's random generators (LoTUS's Gumbel noise), the method's own generators, `resumable_attributes`.
        The data order needs nothing: it is a function of the seed and the epoch."""
        state = {"torch_rng": torch.get_rng_state(),
                 "generators": {name: value.get_state() for name, value in vars(self).items()
                                if isinstance(value, torch.Generator)},
                 "attributes": {name: getattr(self, name) for name in self.resumable_attributes}}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def restore_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        for name, generator_state in state["generators"].items():
            getattr(self, name).set_state(generator_state)
        for name, value in state["attributes"].items():
            setattr(self, name, value)

    def check_finite(self, model: nn.Module, epoch: int, mean_loss: float) -> None:
        """Stop a diverged run: a NaN or infinite loss or weight raises DivergedError naming the epoch and settings.

        Checked every epoch, before the epoch's checkpoint, so a diverged model is never checkpointed,
        evaluated or saved (a NaN model once went out as a run that "succeeded" with RF-JSD nan).
        """
        state = unwrap(model).state_dict()
        bad = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
        if math.isfinite(mean_loss) and not bad:
            return
        problems = ([] if math.isfinite(mean_loss) else [f"mean loss {mean_loss}"])
        if bad:
            problems.append(f"non-finite values in {len(bad)} of {len(state)} tensors (first: {bad[0]})")
        own = {key: self.config[key] for key in ("lr", *type(self).defaults) if key in self.config}
        settings = ", ".join(f"{self.name}.{key}={value}" for key, value in own.items())
        raise DivergedError(f"{self.name} diverged in epoch {epoch + 1}: {'; '.join(problems)}. Settings: {settings}. "
                            f"No model was saved; lower {self.name}.lr (--set {self.name}.lr=...) and run again")

    def finish(self, model: nn.Module, data: UnlearnData, device: torch.device) -> None:
        """Runs after the last epoch, inside the timed region (UNSIR's repair phase, for example)."""

    def _run_epoch(self, model, data, device, epoch: int, epochs: int) -> float:
        model.train()
        total, steps = 0.0, 0
        source = self.train_source(data)
        batches = source.batches(int(self.config["batch_size"]), shuffle=True, seed=self.seed * 1000 + epoch)
        for batch, weight in synchronized(batches, device):
            loss = self.step(model, self.optimizer, batch, weight, device)
            if weight:
                total, steps = total + loss, steps + 1
            if steps and steps % int(self.config["log_every"]) == 0:
                self.log(f"[{self.name}] epoch {epoch + 1}/{epochs} batch {steps} loss {loss:.4f} "
                         f"{self._extras_text()}")
        return total / max(steps, 1)

    def _extras_text(self) -> str:
        return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.progress_extras().items())


def to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return batch["image"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)
