"""U-LiRA's shadow bank: K shadow originals trained as parallel Ray tasks, kept under a bank URI, reused.

Pool = train ∪ val. Shadows come in complementary pairs: a seeded hash of (bank seed, pair, sample id) puts
each pool sample in exactly one shadow of every pair, so with K shadows every sample is in the training half
H_i of exactly K/2 of them and never seen by the other K/2, and a bank grows two shadows at a time without
changing the halves of the shadows it has. Shadow i trains from scratch on H_i with the dataset's recipe (the
`retrain` method's settings, as `unlearn train` uses them).

Layout under the bank URI (local or s3://, every file written atomically):
    manifest.json              format, the recipe, the model spec, the data fingerprint (name and the shards'
                               sha256s from _meta.json) and the bank seed; a bank for other data, another recipe
                               or another model is refused, naming what differs
    shadows/shadow-0003.pt     shadow 3's trained weights (a project checkpoint)
    shadows/shadow-0003.json   its training record, written after the weights: a shadow is in the bank only once
                               this exists, so a bank interrupted half-way resumes with the shadows it lacks

One Ray task per shadow trains in process on data it reads and decodes itself (the methods know nothing of
Ray). Its resources are `cpus_per_shadow` CPUs (torch gets as many threads) and a GPU with `gpus`; Ray runs as
many at once as the cluster holds, so K grows with the cluster and not with the wall clock. A task whose worker
or node is lost is retried (`max_failures`), as is one whose storage kept failing; a shadow that diverges fails
alone and the audit says how many served.

The same tasks unlearn a shadow for an audit (`unlearn_and_score`) and score any model on the audited samples
(`score_model`): pipeline/runs/audit_mia.py composes them.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

import numpy as np

from pipeline import storage
from pipeline.data.splits import hash_unit
from pipeline.errors import ConfigError, DataError, DivergedError, StorageUnavailableError, UnlearnError
from pipeline.train.console import log

BANK_FORMAT = "ulira-bank/1"
MANIFEST = "manifest.json"
SHADOWS_DIR = "shadows"
POOL_SPLITS = ("train", "val")


# ---- who trains on what -----------------------------------------------------------------------------------------

def in_shadow_half(sample_ids, bank_seed: int, shadow: int) -> np.ndarray:
    """Whether each sample is in shadow `shadow`'s training half: shadows 2j and 2j+1 split the pool between them."""
    pair = shadow // 2
    first = np.fromiter((hash_unit(bank_seed, f"ulira-pair-{pair}", i) < 0.5 for i in sample_ids), dtype=bool,
                        count=len(sample_ids))
    return first if shadow % 2 == 0 else ~first


@dataclass(frozen=True)
class Membership:
    """The rows a model trains on: a shadow's half of the pool, or explicit sample ids (the test's own models)."""

    bank_seed: int | None = None
    shadow: int | None = None
    sample_ids: frozenset | None = None

    def mask(self, ids: np.ndarray, splits: np.ndarray) -> np.ndarray:
        if self.sample_ids is not None:
            return np.fromiter((i in self.sample_ids for i in ids), dtype=bool, count=len(ids))
        in_pool = np.isin(splits, POOL_SPLITS)
        return in_pool & in_shadow_half(ids, self.bank_seed, self.shadow)


# ---- the bank ---------------------------------------------------------------------------------------------------

def data_fingerprint(meta) -> dict:
    """What identifies the data a shadow trained on: the dataset's name and its shards' sha256s (_meta.json)."""
    return {"name": meta.name, "shards": [{"file": shard["file"], "sha256": shard["sha256"]} for shard in meta.shards]}


def bank_manifest(meta, recipe: dict, model_spec: dict, bank_seed: int) -> dict:
    """The manifest a bank for this data, recipe, model and seed has (as it reads back from JSON)."""
    return json.loads(json.dumps({"format": BANK_FORMAT, "data": data_fingerprint(meta), "recipe": recipe,
                                  "model": model_spec, "seed": bank_seed, "pool": list(POOL_SPLITS)}))


def manifest_differences(stored: dict, wanted: dict) -> list[str]:
    """What makes a stored bank another bank than the one wanted, in words (empty: the same)."""
    problems = []
    if stored.get("format") != wanted["format"]:
        problems.append(f"format {stored.get('format')!r}, not {wanted['format']!r}")
    stored_data, wanted_data = stored.get("data", {}), wanted["data"]
    if stored_data.get("name") != wanted_data["name"]:
        problems.append(f"other data (dataset {stored_data.get('name')!r} in the bank, {wanted_data['name']!r} here)")
    elif stored_data.get("shards") != wanted_data["shards"]:
        theirs = {s["file"]: s["sha256"] for s in stored_data.get("shards", [])}
        ours = {s["file"]: s["sha256"] for s in wanted_data["shards"]}
        changed = sorted(name for name in set(theirs) | set(ours) if theirs.get(name) != ours.get(name))
        problems.append(f"other data (shards whose sha256 differ or are missing: {', '.join(changed)})")
    for section, what in (("recipe", "another recipe"), ("model", "another model")):
        keys = sorted(set(stored.get(section, {})) | set(wanted[section]))
        changed = [f"{key}: {stored.get(section, {}).get(key)!r} in the bank, {wanted[section].get(key)!r} here"
                   for key in keys if stored.get(section, {}).get(key) != wanted[section].get(key)]
        if changed:
            problems.append(f"{what} ({'; '.join(changed)})")
    for key in ("seed", "pool"):
        if stored.get(key) != wanted[key]:
            problems.append(f"another {key} ({stored.get(key)!r} in the bank, {wanted[key]!r} here)")
    return problems


@dataclass(frozen=True)
class ShadowBank:
    uri: str
    manifest: dict

    @property
    def seed(self) -> int:
        return int(self.manifest["seed"])

    def checkpoint(self, shadow: int) -> str:
        return storage.join(self.uri, SHADOWS_DIR, f"shadow-{shadow:04d}.pt")

    def record_uri(self, shadow: int) -> str:
        return storage.join(self.uri, SHADOWS_DIR, f"shadow-{shadow:04d}.json")

    def record(self, shadow: int) -> dict | None:
        """Shadow `shadow`'s training record, or None while it is not (completely) in the bank."""
        uri = self.record_uri(shadow)
        return json.loads(storage.read_text(uri)) if storage.exists(uri) else None

    def membership(self, shadow: int) -> Membership:
        return Membership(bank_seed=self.seed, shadow=shadow)


def open_bank(uri: str, wanted: dict) -> ShadowBank:
    """The bank at `uri`, created with `wanted` as its manifest if there is none; one with another manifest is
    refused with what differs. Creating is race-free: of two audits starting a bank at once, one manifest wins."""
    storage.ensure_bucket(uri)
    manifest_uri = storage.join(uri, MANIFEST)
    if not storage.exists(manifest_uri):
        storage.create_once(manifest_uri, json.dumps(wanted, indent=2, sort_keys=True).encode())
    try:
        stored = json.loads(storage.read_text(manifest_uri))
    except json.JSONDecodeError as exc:
        raise DataError(f"{manifest_uri} is not a shadow bank manifest: {exc}") from exc
    problems = manifest_differences(stored, wanted)
    if problems:
        raise ConfigError(f"the shadow bank {uri} was built for {'; '.join(problems)}: it cannot serve this audit. "
                          "Use another --bank (or remove that one) to build a bank for this data and recipe")
    return ShadowBank(uri, stored)


# ---- reading rows inside a task ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class DataAccess:
    """How a task reads the shards: where they are, their metadata and the model's input size."""

    uri: str
    meta: object  # DatasetMeta
    image_size: int


def decode_rows(access: DataAccess, layout, keep: np.ndarray):
    """The rows of `layout` where `keep`, decoded in file order, as one TensorSource (reads only the Parquet row
    groups that hold them)."""
    import torch

    from pipeline.data.sources import TensorSource
    from pipeline.train.datasets import ReadAndDecode, read_units

    units = read_units(layout, keep, np.zeros(len(keep), dtype=bool))
    decode = ReadAndDecode(units, access.meta.channels, access.image_size, access.meta.resize, forget_flag=False)
    blocks = list(decode.blocks(range(len(units))))
    if not blocks:
        raise DataError(f"no rows of {access.uri} selected for this model")
    images = np.concatenate([block["image"] for block in blocks])
    labels = np.concatenate([block["label"] for block in blocks]).astype(np.int64)
    ids = np.concatenate([block["sample_id"] for block in blocks]).astype(object)
    return TensorSource(torch.from_numpy(images), torch.from_numpy(labels), ids)


def rows_of(layout, sample_ids) -> np.ndarray:
    wanted = set(sample_ids)
    return np.fromiter((i in wanted for i in layout.ids), dtype=bool, count=len(layout.ids))


def _task_setup(cpus: float, gpus: bool):
    """torch threads = the task's CPUs (not every core of the node, which parallel tasks would fight over)."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    return torch.device("cuda") if gpus and torch.cuda.is_available() else torch.device("cpu")


@dataclass(frozen=True)
class TaskResources:
    cpus: float = 1.0
    gpus: bool = False
    max_failures: int = 1  # retries of a task whose worker or node was lost, or whose storage kept failing


# ---- the tasks --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainJob:
    """Train one model from scratch with `recipe` on the rows `membership` selects; save it to `checkpoint`."""

    data: DataAccess
    model_spec: dict
    recipe: dict
    seed: int
    membership: Membership
    checkpoint: str
    resources: TaskResources = field(default_factory=TaskResources)


def train_model(job: TrainJob) -> dict:
    """Run in a Ray task: train, save the weights then the record beside them (`<checkpoint>.json` minus `.pt`).

    Returns the record, or {"failed": message} for a run that diverged (no model saved), so that one shadow's
    divergence fails that shadow only."""
    import torch

    from pipeline.methods import create_method
    from pipeline.methods.accuracy import accuracy
    from pipeline.methods.base import UnlearnData
    from pipeline.models import ModelSpec, build_model, save_checkpoint
    from pipeline.train.datasets import read_layout

    device = _task_setup(job.resources.cpus, job.resources.gpus)
    layout = read_layout(job.data.uri, job.data.meta)
    members = job.membership.mask(layout.ids, layout.splits)
    source = decode_rows(job.data, layout, members)
    spec = ModelSpec(**job.model_spec)
    torch.manual_seed(job.seed)
    model = build_model(spec).to(device)
    method = create_method("retrain", job.recipe, seed=job.seed, log=None)
    started = time.perf_counter()
    try:
        report = method.unlearn(model, None, UnlearnData(forget=source, retain=source, num_classes=spec.num_classes),
                                device)
    except DivergedError as exc:
        return {"failed": str(exc)}
    seconds = time.perf_counter() - started
    held_out = np.isin(layout.splits, POOL_SPLITS) & ~members
    record = {"seed": job.seed, "members": int(members.sum()), "train_seconds": seconds,
              "epochs_run": report.epochs_run, "accuracy_members": accuracy(model, source, device),
              "accuracy_held_out": accuracy(model, decode_rows(job.data, layout, held_out), device)
              if held_out.any() else None}
    record["sha256"] = save_checkpoint(model, spec, job.checkpoint, extra={"trained_on": record["members"],
                                                                          "seed": job.seed})
    storage.write_text(record_beside(job.checkpoint), json.dumps(record, indent=2))
    return record


def record_beside(checkpoint: str) -> str:
    return checkpoint[:-len(".pt")] + ".json" if checkpoint.endswith(".pt") else checkpoint + ".json"


@dataclass(frozen=True)
class ScoreJob:
    """φ of a model on the audited samples; with `entropy_splits`, also its softmax entropies on those sets (the
    entropy MIA of pipeline/metrics/mia.py, for comparison)."""

    data: DataAccess
    model_uri: str
    candidates: tuple  # sample ids, in the audit's order
    entropy_splits: dict | None = None  # {name: sample ids}
    resources: TaskResources = field(default_factory=TaskResources)


def score_model(job: ScoreJob) -> dict:
    """Run in a Ray task: {"phi": φ per candidate, "entropies": {name: entropies in sample-key order}}."""
    from pipeline.models import load_checkpoint
    from pipeline.train.datasets import read_layout

    device = _task_setup(job.resources.cpus, job.resources.gpus)
    layout = read_layout(job.data.uri, job.data.meta)
    model = load_checkpoint(job.model_uri)[0].to(device)
    result = {"phi": _candidate_margins(model, job.data, layout, job.candidates, device), "entropies": {}}
    for name, ids in (job.entropy_splits or {}).items():
        result["entropies"][name] = _entropies(model, decode_rows(job.data, layout, rows_of(layout, ids)), device)
    return result


@dataclass(frozen=True)
class UnlearnJob:
    """One shadow's part of an audit: start from its original, unlearn `forget_ids` ⊂ its half with the method
    (D_r = the rest of its half, D_u = the pool it never saw), then score the audited samples."""

    data: DataAccess
    shadow_checkpoint: str
    membership: Membership
    forget_ids: tuple
    candidates: tuple
    method: str
    settings: dict
    seed: int
    resources: TaskResources = field(default_factory=TaskResources)


def unlearn_and_score(job: UnlearnJob) -> dict:
    """Run in a Ray task: {"phi", "unlearn_seconds", "epochs_run"}, or {"failed": message} if the method diverged."""
    import torch

    from pipeline.methods import create_method, method_class
    from pipeline.methods.harness import unlearn_data
    from pipeline.models import load_checkpoint
    from pipeline.train.datasets import read_layout

    device = _task_setup(job.resources.cpus, job.resources.gpus)
    layout = read_layout(job.data.uri, job.data.meta)
    half = job.membership.mask(layout.ids, layout.splits)
    forget = rows_of(layout, job.forget_ids)
    if (forget & ~half).any():
        raise UnlearnError("a shadow's forget set must lie inside its training half")
    unseen = np.isin(layout.splits, POOL_SPLITS) & ~half
    sources = {"forget": decode_rows(job.data, layout, forget), "retain": decode_rows(job.data, layout, half & ~forget),
               "unseen": decode_rows(job.data, layout, unseen)}
    model, spec, _ = load_checkpoint(job.shadow_checkpoint)
    model = model.to(device)
    # The frozen original (a teacher) is a second copy of the shadow as trained, for the methods that use one;
    # loaded before the seed is set, as the worker loop does, so that building it draws nothing from the method's
    # random stream (LoTUS's Gumbel noise).
    original = (load_checkpoint(job.shadow_checkpoint)[0].to(device) if method_class(job.method).needs_original
                else None)
    torch.manual_seed(job.seed)
    method = create_method(job.method, job.settings, seed=job.seed, log=None)
    data = unlearn_data(sources, method, job.seed, num_classes=spec.num_classes)
    try:
        report = method.unlearn(model, original, data, device)
    except DivergedError as exc:
        return {"failed": str(exc)}
    return {"phi": _candidate_margins(model, job.data, layout, job.candidates, device),
            "unlearn_seconds": report.unlearn_seconds, "epochs_run": report.epochs_run}


def _logits(model, source, device, batch_size: int = 256):
    import torch

    model.eval()
    with torch.no_grad():
        return torch.cat([model(batch["image"].to(device)).double().cpu() for batch in source.batches(batch_size)])


def _candidate_margins(model, access: DataAccess, layout, candidates, device) -> np.ndarray:
    from pipeline.metrics.ulira import logit_margin

    source = decode_rows(access, layout, rows_of(layout, candidates))
    margins = logit_margin(_logits(model, source, device).numpy(), source.labels.numpy())
    position = {sample_id: row for row, sample_id in enumerate(source.sample_ids)}
    return margins[[position[sample_id] for sample_id in candidates]]


def _entropies(model, source, device) -> np.ndarray:
    """Softmax entropies in the order SplitStats.reduce gives them (by sample-id hash), so the entropy MIA picks the
    same samples as `unlearn run`'s for the same seed."""
    from pipeline.metrics.accumulate import probabilities, sample_keys, softmax_entropy

    entropies = softmax_entropy(probabilities(_logits(model, source, device))).numpy()
    keys = sample_keys(source.sample_ids).numpy()
    return entropies[np.lexsort((entropies, keys))]


# ---- running tasks on Ray ---------------------------------------------------------------------------------------

def run_tasks(jobs: dict, parallel: int | None = None, on_result=None) -> dict:
    """Run each `{key: (function, job)}` as one Ray task `function(job)`, at most `parallel` at once (None: as many
    as the cluster's resources allow); return {key: result}, a task that failed through its retries as
    {"failed": text}. `on_result(key, result)` runs as each finishes (progress lines)."""
    import ray

    remotes = {function: ray.remote(function) for function, _ in jobs.values()}
    pending, running, results = list(jobs.items()), {}, {}
    while pending or running:
        while pending and (parallel is None or len(running) < parallel):
            key, (function, job) = pending.pop(0)
            resources = job.resources
            task = remotes[function].options(num_cpus=resources.cpus, num_gpus=1 if resources.gpus else 0,
                                             max_retries=resources.max_failures,
                                             retry_exceptions=[StorageUnavailableError])
            running[task.remote(job)] = key
        done, _ = ray.wait(list(running), num_returns=1)
        key = running.pop(done[0])
        try:
            results[key] = ray.get(done[0])
        except Exception as exc:  # noqa: BLE001 -- reported per task; the caller decides whether enough served
            results[key] = {"failed": _first_line(exc)}
        if on_result:
            on_result(key, results[key])
    return results


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):  # Ray wraps the task's own error: its last "XError: ..." line is the cause
        if "Error" in line and ":" in line:
            return line
    return lines[-1] if lines else type(exc).__name__


def shadow_seed(bank_seed: int, shadow: int) -> int:
    """Initialisation and shuffling seed of a shadow: distinct per shadow and bank."""
    digest = hashlib.blake2b(f"ulira-shadow|{bank_seed}|{shadow}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


def ensure_shadows(bank: ShadowBank, shadows: int, data: DataAccess, resources: TaskResources,
                   parallel: int | None = None) -> dict:
    """Shadows 0..shadows-1 in the bank: those missing are trained now, in parallel. Returns {"records": {i:
    record}, "failed": {i: message}, "trained_now": [i], "train_wall_seconds"}."""
    records = {i: bank.record(i) for i in range(shadows)}
    missing = {i: TrainJob(data, bank.manifest["model"], bank.manifest["recipe"], shadow_seed(bank.seed, i),
                           bank.membership(i), bank.checkpoint(i), resources)
               for i, record in records.items() if record is None}
    if not missing:
        log(f"shadow bank {bank.uri}: all {shadows} shadows already trained")
        return {"records": records, "failed": {}, "trained_now": [], "train_wall_seconds": 0.0}
    log(f"shadow bank {bank.uri}: training {len(missing)} of {shadows} shadows "
        f"({shadows - len(missing)} already there)")
    started = time.perf_counter()

    def progress(shadow: int, result: dict) -> None:
        if "failed" in result:
            log(f"  shadow {shadow} FAILED: {result['failed']}")
        else:
            held_out = result["accuracy_held_out"]
            log(f"  shadow {shadow}: {result['members']} samples, {result['epochs_run']} epochs in "
                f"{result['train_seconds']:.1f} s; accuracy {result['accuracy_members']:.3f} on its half"
                + (f", {held_out:.3f} on the rest of the pool" if held_out is not None else ""))

    results = run_tasks({i: (train_model, job) for i, job in missing.items()}, parallel, progress)
    wall = time.perf_counter() - started
    failed = {i: result["failed"] for i, result in results.items() if "failed" in result}
    records.update({i: result for i, result in results.items() if "failed" not in result})
    return {"records": {i: r for i, r in records.items() if r is not None and i not in failed}, "failed": failed,
            "trained_now": sorted(i for i in missing if i not in failed), "train_wall_seconds": wall}
