"""What a run is, as typed values: built once (from the command line, a bench config, a sweep or a deletion
request) and passed to the plain functions of pipeline/runs. Nothing here parses a command line.

A run's *identity* (`RunSpec.identity`, `TrainSpec.identity`) is what decides whether a rerun resumes it; how it
runs (data mode, the S3 endpoint, Ray resources) is not part of it, except that a run goes on only with the worker
count it was started with (pipeline/runs/identity.py).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Callable

from pipeline.errors import ConfigError
from pipeline.methods import check_method_name
from pipeline.train.data_modes import DATA_MODES, DEFAULT_CACHE_MB

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # names of files under an output URI


@dataclass(frozen=True)
class DataSpec:
    """The shards and how to read them."""

    uri: str
    verify: bool = True  # sha256 the shards before anything starts
    mode: str = "auto"  # stream | memory | auto (memory when the decoded data is under 256 MiB)
    cache_mb: float = DEFAULT_CACHE_MB  # per worker, for sets kept decoded after their first pass
    s3_endpoint: str | None = None  # an S3-compatible endpoint (default: $AWS_ENDPOINT_URL)

    def check(self) -> None:
        if self.mode not in DATA_MODES:
            raise ConfigError(f"data mode must be one of {', '.join(DATA_MODES)}, not {self.mode!r}")
        if self.cache_mb < 0:
            raise ConfigError(f"--cache-mb must be 0 or more, not {self.cache_mb}")


@dataclass(frozen=True)
class RayResources:
    """The Ray Train worker group of a run."""

    workers: int = 1
    gpus: bool = False  # one GPU per worker
    cpus_per_worker: float = 1.0
    max_failures: int = 1  # worker-group restarts, each resuming from the last epoch checkpoint
    channels_last: bool = False

    def check(self) -> None:
        """Checked in the driver before anything starts (milliseconds, not a worker's traceback later)."""
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, not {self.workers}")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"--cpus-per-worker must be above 0, not {self.cpus_per_worker}")
        if self.max_failures < -1:
            raise ConfigError(f"--max-failures must be -1 (retry forever) or more, not {self.max_failures}")


@dataclass(frozen=True)
class MethodRun:
    """One method to run on a RunSpec's data and forget set.

    `label` names the record (default: the method); `model_uri` starts from another model than the spec's
    original (the benchmark evaluates its gold model as the `retrain` row this way: `original` started from
    it), and such a run saves no model copy; `model_out` puts the unlearned model elsewhere than OUT/NAME.pt;
    `finalize(record)` returns the record to store.
    """

    method: str
    settings: dict | None = None  # over the method's defaults (a config file's, then --set)
    label: str | None = None
    model_uri: str | None = None
    model_out: str | None = None
    finalize: Callable | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return self.label or self.method


@dataclass(frozen=True)
class RunSpec:
    """An unlearning run: `runs` one after another in one Ray Train fit (one start-up), a record each.

    A single run keeps per-epoch checkpoints and resumes (under `name`, default METHOD-sSEED); several in
    one fit keep no epoch checkpoints, but each run the fit finished is kept: a worker group restarted after a
    lost node goes on with the run in progress (pipeline/train/loop.py).
    """

    data: DataSpec
    original: str  # checkpoint of the trained model
    runs: tuple[MethodRun, ...]
    out: str  # run URI: unlearned models, Ray Train checkpoints, result records
    forget: str = "random:0.1"
    seed: int = 3407
    gold: str | None = None  # retrained model: adds JSD and Avg Gap
    name: str | None = None
    overwrite: bool = False  # start a single run afresh even if OUT holds one of that name with other settings
    floor_draws: int | None = None  # RF-JSD floor's draws (None: the default; 0: no floor)
    ray: RayResources = field(default_factory=RayResources)

    def check(self) -> None:
        if not self.runs:
            raise ConfigError("a run needs at least one method")
        for run in self.runs:
            check_method_name(run.method)
        self.data.check()
        self.ray.check()
        check_name(self.name, "--name")
        if self.floor_draws is not None and self.floor_draws < 0:
            raise ConfigError(f"--floor-draws must be 0 or more, not {self.floor_draws}")

    @property
    def single(self) -> bool:
        return len(self.runs) == 1

    def with_runs(self, *runs: MethodRun) -> "RunSpec":
        return dataclasses.replace(self, runs=tuple(runs))

    def identity(self, settings: dict, model_name: str) -> dict:
        """What makes a single run this run: a checkpoint may only be resumed into a run with the same identity.
        `settings` are the method's resolved settings. As it reads back from JSON (tuples become lists)."""
        from pipeline.train.runner import absolute

        run = self.runs[0]
        identity = {"data": absolute(self.data.uri), "forget": self.forget, "seed": self.seed, "method": run.method,
                    "settings": settings, "original": absolute(self.original), "model": model_name,
                    "gold": absolute(self.gold) if self.gold else None}
        return json.loads(json.dumps(identity))


@dataclass(frozen=True)
class TrainSpec:
    """Training a model through Ray Train: the original (all of train) or, `retain_only`, the gold model (D_r)."""

    data: DataSpec
    out: str  # model.pt, checkpoints and the training record land here
    model: str = "cnn"  # cnn | timm name | torchvision:NAME
    weights: str | None = None  # initial weights (never downloaded)
    image_size: int | None = None  # model input size (default: the data's)
    retain_only: bool = False
    forget: str = "random:0.1"  # the forget spec whose D_r a gold model trains on
    seed: int = 3407
    recipe: dict = field(default_factory=dict)  # over the `retrain` method's defaults
    overwrite: bool = False  # start afresh even if OUT holds a training run with other settings
    ray: RayResources = field(default_factory=RayResources)

    def check(self) -> None:
        self.data.check()
        self.ray.check()

    def identity(self, recipe: dict, image_size: int) -> dict:
        """What makes this training run this run (pipeline/runs/identity.py): `recipe` resolved (defaults
        included) and the resolved input size, so that spelling out a default is the same run. The forget spec
        only shapes a gold model's data. As it reads back from JSON."""
        from pipeline.train.runner import absolute

        identity = {"kind": "train", "data": absolute(self.data.uri), "model": self.model,
                    "weights": absolute(self.weights) if self.weights else None, "image_size": image_size,
                    "retain_only": self.retain_only, "forget": self.forget if self.retain_only else None,
                    "seed": self.seed, "recipe": recipe}
        return json.loads(json.dumps(identity))


@dataclass(frozen=True)
class EvalSpec:
    """Evaluating a model: accuracies, MIA, RF-JSD and its floor; JSD and Avg Gap with a gold model."""

    data: DataSpec
    model: str
    out: str
    original: str | None = None  # RF-JSD's reference on D_u (default: the model)
    gold: str | None = None
    forget: str = "random:0.1"
    seed: int = 3407
    label: str = "eval"  # the method name to record
    floor_draws: int | None = None
    ray: RayResources = field(default_factory=RayResources)

    def check(self) -> None:
        self.data.check()
        self.ray.check()
        check_name(self.label, "--label")


def check_name(name: str | None, flag: str) -> None:
    if name is not None and (not SAFE_NAME.fullmatch(name) or ".." in name):
        raise ConfigError(f"{flag} {name!r} must be letters, digits, '.', '_' or '-' (no path separators or '..'): "
                          "it names files")
