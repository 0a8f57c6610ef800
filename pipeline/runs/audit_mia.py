"""A U-LiRA membership audit of one unlearned model (`unlearn audit-mia`): the shadow bank, the shadows' unlearning
and the scoring as parallel Ray tasks (pipeline/runs/shadows.py), the attack's maths in pipeline/metrics/ulira.py.

The audited samples ("candidates") are the target's D_f (positives) and as many never-seen val samples
(negatives), matched to D_f's classes where val allows. Per audit, shadow i unlearns F_i: a seeded part of the
candidates inside its half H_i, as large a share of H_i as D_f is of train (capped at the candidates it holds),
with the method under test and the target's settings; its D_r is the rest of H_i and its D_u the pool it never
saw. With K shadows and no failures, every candidate is therefore
- "never seen" in exactly K/2 shadows (the other half of each complementary pair), and
- "unlearned" in about K/2 · q of them, q = min(1, share · |H_i| / |candidates ∩ H_i|): on digits-hard at
  random:0.1, F_i is 65 of the ~80 candidates in a half, q ≈ 0.8, so about 0.4 · K;
the remaining ones trained on it and kept it, and take no part in the fits.

Offline variant: no shadow unlearns anything; the "never seen" scores come from the shadow originals.

Sanity anchors (DESIGN.md §5): with --original and --gold, the bank scores the original model (it trained on D_f:
must be clearly attackable, by the offline statistic, see `_anchors`) and a model retrained without D_f (by the
audit's own statistic: must not be, its AUC interval contains 0.5). If either fails, the output says the audit's
figures must not be trusted.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from pipeline import storage
from pipeline.data.splits import UNSEEN_SPLIT, hash_unit
from pipeline.errors import ConfigError, UnlearnError
from pipeline.metrics import ulira
from pipeline.runs.common import check_model_fits_data, check_output_uri, open_dataset, use_endpoint
from pipeline.runs.shadows import (POOL_SPLITS, DataAccess, ScoreJob, ShadowBank, TaskResources, UnlearnJob,
                                   bank_manifest, ensure_shadows, in_shadow_half, open_bank, run_tasks, score_model,
                                   unlearn_and_score)
from pipeline.runs.spec import DataSpec
from pipeline.train.console import log

RESULT_FILE = "ulira.json"
SCORES_FILE = "ulira-scores.npz"  # every shadow's φ and the group masks: the fits can be redone from it
SUPPORTED_FORGET_KINDS = ("random", "ids")
SHOWN_EXPOSED = 10  # the positives the attack is surest about, listed in the output


@dataclass(frozen=True)
class AuditSpec:
    """One audit: the target model and its forget set, the method that made it, the bank and the attack."""

    data: DataSpec
    model: str  # the unlearned model under audit
    forget: str
    method: str
    bank: str
    out: str
    shadows: int = 16
    variant: str = ulira.ONLINE
    settings: dict = field(default_factory=dict)  # the method's, as the target was unlearned with them
    recipe: dict = field(default_factory=dict)  # training recipe over the `retrain` defaults, as the original's
    seed: int = 3407  # the forget spec's seed; also the negatives, the shadows' forget sets and the bootstrap
    bank_seed: int = 0
    original: str | None = None  # sanity anchor: must be attackable
    gold: str | None = None  # sanity anchor: retrained without D_f, must not be
    fprs: tuple = ulira.DEFAULT_FPRS
    resamples: int = ulira.BOOTSTRAP_RESAMPLES
    resources: TaskResources = field(default_factory=TaskResources)
    parallel: int | None = None  # shadow tasks at once (None: as many as the cluster's resources allow)

    def check(self) -> None:
        self.data.check()
        ulira.check_variant(self.variant)
        for fpr in self.fprs:
            ulira.check_fpr(fpr)
        if not self.fprs:
            raise ConfigError("--fpr needs at least one false-positive rate")
        if self.resamples < 100:
            raise ConfigError(f"--resamples must be at least 100 for a 95 % interval, not {self.resamples}")
        if self.resources.cpus <= 0:
            raise ConfigError(f"--cpus-per-shadow must be above 0, not {self.resources.cpus}")
        if self.resources.max_failures < -1:
            raise ConfigError(f"--max-failures must be -1 (retry forever) or more, not {self.resources.max_failures}")
        if self.parallel is not None and self.parallel < 1:
            raise ConfigError(f"--parallel must be at least 1, not {self.parallel}")
        kind = self.forget.partition(":")[0]
        if kind not in SUPPORTED_FORGET_KINDS:
            raise ConfigError(f"U-LiRA audits sample unlearning (forget spec random:F or ids:FILE), not {self.forget!r}: "
                              "whole classes or limited-access splits have no per-sample never-seen counterpart here")

    @property
    def shadow_fprs(self) -> tuple:
        """FPRs the shadow trials must resolve: the online variant's (the offline one has no unlearned shadows)."""
        return tuple(self.fprs) if self.variant == ulira.ONLINE else ()


# ---- the audited samples and each shadow's part -----------------------------------------------------------------

@dataclass(frozen=True)
class Candidates:
    """The audited samples in a fixed order: positives (the target's D_f) then negatives (never-seen val)."""

    sample_ids: tuple
    labels: np.ndarray
    is_positive: np.ndarray
    forget_share: float  # |D_f| / |train|: the share of its half a shadow unlearns

    @property
    def is_negative(self) -> np.ndarray:
        return ~self.is_positive


def choose_candidates(index, splits, seed: int) -> Candidates:
    """D_f and as many val samples, drawn per class of D_f where val has enough of that class, the rest at random
    from the remaining val samples (seeded). A val smaller than D_f keeps a seeded subset of D_f of val's size."""
    ids = np.asarray(index.column("sample_id").to_pylist(), dtype=object)
    labels = index.column("label").to_numpy()
    forget_rows = np.flatnonzero(splits.select(index, "forget"))
    val_rows = np.flatnonzero(splits.select(index, "unseen"))
    train_count = int(splits.select(index, "forget").sum() + splits.select(index, "retain").sum())
    if not len(val_rows):
        raise ConfigError(f"U-LiRA needs never-seen samples: the data has no {UNSEEN_SPLIT!r} split")
    if len(val_rows) < len(forget_rows):
        forget_rows = _ranked(forget_rows, ids, seed, "ulira-positives")[:len(val_rows)]
    negatives = _class_matched(val_rows, ids, labels, labels[forget_rows], seed)
    rows = np.concatenate([np.sort(forget_rows), np.sort(negatives)])
    is_positive = np.arange(len(rows)) < len(forget_rows)
    return Candidates(tuple(str(i) for i in ids[rows]), labels[rows].astype(np.int64), is_positive,
                      len(splits.forget_ids) / max(train_count, 1))


def _ranked(rows: np.ndarray, ids: np.ndarray, seed: int, salt: str) -> np.ndarray:
    return np.asarray(sorted(rows, key=lambda row: (hash_unit(seed, salt, ids[row]), ids[row])), dtype=np.int64)


def _class_matched(val_rows, ids, labels, wanted_labels, seed: int) -> np.ndarray:
    chosen = []
    for label, count in zip(*np.unique(wanted_labels, return_counts=True)):
        same_class = _ranked(val_rows[labels[val_rows] == label], ids, seed, "ulira-negatives")
        chosen.extend(same_class[:count])
    short = len(wanted_labels) - len(chosen)
    if short:  # classes val has too few of: the rest from any class, still seeded
        rest = _ranked(np.setdiff1d(val_rows, chosen), ids, seed, "ulira-negatives-rest")
        chosen.extend(rest[:short])
    return np.asarray(chosen, dtype=np.int64)


def shadow_forget_ids(candidates: Candidates, in_half: np.ndarray, half_size: int, seed: int, shadow: int) -> tuple:
    """F_i: the candidates in shadow i's half with the smallest seeded hash, D_f's share of the half in number
    (capped at the candidates the half holds)."""
    inside = np.flatnonzero(in_half)
    size = min(len(inside), int(np.floor(candidates.forget_share * half_size + 0.5)))
    ids = np.asarray(candidates.sample_ids, dtype=object)
    ranked = sorted(inside, key=lambda row: (hash_unit(seed, f"ulira-forget-{shadow}", ids[row]), ids[row]))
    return tuple(ids[row] for row in sorted(ranked[:size]))


def group_masks(candidates: Candidates, halves: dict, forget_sets: dict, shadows: list) -> tuple:
    """[served shadows, candidates] masks: "unlearned" (in F_i) and "never seen" (outside H_i)."""
    position = {sample_id: column for column, sample_id in enumerate(candidates.sample_ids)}
    unlearned = np.zeros((len(shadows), len(candidates.sample_ids)), dtype=bool)
    never_seen = np.zeros_like(unlearned)
    for row, shadow in enumerate(shadows):
        never_seen[row] = ~halves[shadow]
        unlearned[row, [position[i] for i in forget_sets.get(shadow, ())]] = True
    return unlearned, never_seen


# ---- the audit --------------------------------------------------------------------------------------------------

def check_before_compute(spec: AuditSpec):
    """Everything that can be refused without Ray: returns (meta, index, splits, model_spec, settings, recipe,
    candidates, bank)."""
    from pipeline.data.splits import make_splits
    from pipeline.methods import create_method
    from pipeline.models import load_checkpoint
    from pipeline.runs.train import training_recipe
    from pipeline.runs.unlearn import method_settings

    spec.check()
    use_endpoint(spec.data.s3_endpoint)
    check_output_uri(spec.out)
    settings = method_settings(spec.method, spec.settings)  # an unknown method or setting: ConfigError
    recipe = training_recipe(spec.recipe)
    create_method("retrain", recipe, log=None)  # an unknown recipe key: ConfigError
    meta, index = open_dataset(spec.data)
    _, model_spec, _ = load_checkpoint(spec.model)
    check_model_fits_data(model_spec, meta, spec.model, spec.data.uri)
    for anchor in (spec.original, spec.gold):
        if anchor:
            check_model_fits_data(load_checkpoint(anchor)[1], meta, anchor, spec.data.uri)
    splits = make_splits(index, spec.forget, spec.seed, meta.num_classes)
    candidates = choose_candidates(index, splits, spec.seed)
    ulira.check_shadow_count(spec.shadows, spec.shadow_fprs, len(candidates.sample_ids))
    bank = open_bank(spec.bank, bank_manifest(meta, recipe, dataclasses.asdict(model_spec), spec.bank_seed))
    return meta, index, splits, model_spec, settings, recipe, candidates, bank


def audit(spec: AuditSpec) -> dict:
    """Run the audit; write OUT/ulira.json (atomically) and return what it holds."""
    from pipeline.train.runner import absolute, init_ray

    started = time.perf_counter()
    meta, index, splits, model_spec, settings, recipe, candidates, bank = check_before_compute(spec)
    log(f"U-LiRA {spec.variant} audit of {spec.model}: {spec.method} on {spec.forget} (seed {spec.seed}); "
        f"{int(candidates.is_positive.sum())} forgotten vs {int(candidates.is_negative.sum())} never-seen samples, "
        f"{spec.shadows} shadows in {bank.uri}")
    init_ray(1, spec.resources.cpus)
    access = DataAccess(absolute(spec.data.uri), meta, model_spec.image_size)
    bank_state = ensure_shadows(bank, spec.shadows, access, spec.resources, spec.parallel)
    served = sorted(bank_state["records"])
    check_enough_served(served, bank_state["failed"], spec.shadows, "trained")

    halves, forget_sets = _shadow_parts(spec, bank, candidates, index, served)
    scored = _score_everything(spec, bank, access, served, forget_sets, candidates, splits, index, settings)
    failed_now = {i: scored["shadows"][i]["failed"] for i in served if "failed" in scored["shadows"][i]}
    usable = [i for i in served if i not in failed_now]
    failed = {**bank_state["failed"], **failed_now}
    check_enough_served(usable, failed, spec.shadows, "served")
    result = _figures(spec, candidates, scored, usable, halves, forget_sets)
    if failed:
        result["warnings"].insert(0, f"{len(failed)} of {spec.shadows} shadows failed and were left out (shadow "
                                     f"{min(failed)}: {failed[min(failed)]}); the figures come from {len(usable)}")
    result.update(_header(spec, settings, recipe, meta, model_spec, candidates))
    result["bank"] = _bank_summary(spec, bank, bank_state, recipe, usable, failed)
    result["seconds"] = {"shadow_training": bank_state["train_wall_seconds"], "audit_tasks": scored["wall_seconds"],
                         "unlearn_per_shadow": [scored["shadows"][i].get("unlearn_seconds") for i in usable],
                         "total": time.perf_counter() - started}
    result["counts"] = _group_counts(candidates, usable, halves, forget_sets, spec.variant)
    storage.write_text(storage.join(spec.out, RESULT_FILE), json.dumps(result, indent=2))
    _write_scores(spec.out, candidates, scored, usable, halves, forget_sets)
    for line in summary_lines(result):
        log(line)
    log(f"figures written to {storage.join(spec.out, RESULT_FILE)}")
    return result


def _write_scores(out: str, candidates: Candidates, scored: dict, usable: list, halves: dict,
                  forget_sets: dict) -> None:
    """The raw material of the figures, atomically: candidate ids, labels and roles, the shadows' φ [shadows,
    candidates] with their "unlearned" and "never seen" masks, and the target's and anchors' φ."""
    import io

    unlearned, never_seen = group_masks(candidates, halves, forget_sets, usable)
    arrays = {"sample_ids": np.asarray(candidates.sample_ids, dtype=str), "labels": candidates.labels,
              "is_positive": candidates.is_positive, "shadows": np.asarray(usable),
              "shadow_phi": np.stack([scored["shadows"][i]["phi"] for i in usable]),
              "unlearned": unlearned, "never_seen": never_seen,
              **{f"{role}_phi": result["phi"] for role, result in scored["models"].items()}}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    storage.write_bytes(storage.join(out, SCORES_FILE), buffer.getvalue())


# Below this many working shadows the fits are too thin to report anything: the audit ends with the failures instead.
MIN_SERVED_SHADOWS = 3


def check_enough_served(working: list, failed: dict, requested: int, how: str) -> None:
    """A shadow that diverged (or whose task failed through its retries) fails alone; too few left end the audit."""
    if len(working) < MIN_SERVED_SHADOWS:
        first = f"shadow {min(failed)}: {failed[min(failed)]}" if failed else "none"
        raise UnlearnError(f"only {len(working)} of {requested} shadows {how} (first failure: {first}); U-LiRA needs "
                           f"at least {MIN_SERVED_SHADOWS} to fit its Gaussians")


def _shadow_parts(spec: AuditSpec, bank: ShadowBank, candidates: Candidates, index, served: list) -> tuple:
    """({shadow: which candidates are in its half}, {shadow: its forget set F_i}; none for the offline variant)."""
    halves = {i: in_shadow_half(candidates.sample_ids, bank.seed, i) for i in served}
    if spec.variant != ulira.ONLINE:
        return halves, {}
    splits = np.asarray(index.column("split").to_pylist(), dtype=object)
    pool_ids = np.asarray(index.column("sample_id").to_pylist(), dtype=object)[np.isin(splits, POOL_SPLITS)]
    return halves, {i: shadow_forget_ids(candidates, halves[i], int(in_shadow_half(pool_ids, bank.seed, i).sum()),
                                         spec.seed, i) for i in served}


def _bank_summary(spec: AuditSpec, bank: ShadowBank, bank_state: dict, recipe: dict, usable: list,
                  failed: dict) -> dict:
    trained = bank_state["trained_now"]
    return {"uri": bank.uri, "seed": bank.seed, "recipe": recipe, "shadows_requested": spec.shadows,
            "shadows_served": len(usable), "trained_now": trained,
            "failed": {str(i): text for i, text in sorted(failed.items())},
            "train_wall_seconds": bank_state["train_wall_seconds"],
            "train_seconds_per_shadow": [bank_state["records"][i]["train_seconds"] for i in trained]}


def _score_everything(spec: AuditSpec, bank: ShadowBank, access: DataAccess, served: list, forget_sets: dict,
                      candidates: Candidates, splits, index, settings: dict) -> dict:
    """Every shadow's φ (unlearned with the method, or as trained for the offline variant), the target's φ and
    entropies, and the anchors' φ: one Ray task each, all in parallel."""
    from pipeline.train.runner import absolute

    ids = np.asarray(index.column("sample_id").to_pylist(), dtype=object)
    entropy_splits = {name: tuple(ids[splits.select(index, name)]) for name in ("forget", "retain", "test", "unseen")}
    jobs = {("target", None): (score_model, ScoreJob(access, absolute(spec.model), candidates.sample_ids,
                                                     entropy_splits, spec.resources))}
    for role, uri in (("original", spec.original), ("gold", spec.gold)):
        if uri:
            jobs[(role, None)] = (score_model, ScoreJob(access, absolute(uri), candidates.sample_ids,
                                                        resources=spec.resources))
    for i in served:
        if spec.variant == ulira.ONLINE:
            jobs[("shadow", i)] = (unlearn_and_score, UnlearnJob(
                access, bank.checkpoint(i), bank.membership(i), forget_sets[i], candidates.sample_ids, spec.method,
                settings, spec.seed + i, spec.resources))
        else:
            jobs[("shadow", i)] = (score_model, ScoreJob(access, bank.checkpoint(i), candidates.sample_ids,
                                                         resources=spec.resources))
    what = f"unlearning {len(served)} shadows with {spec.method}" if spec.variant == ulira.ONLINE else \
        f"scoring {len(served)} shadow originals"
    log(f"{what}, scoring the target{' and the anchors' if spec.original or spec.gold else ''}")
    started = time.perf_counter()

    def progress(key, result) -> None:
        role, shadow = key
        if role == "shadow" and "failed" in result:
            log(f"  shadow {shadow} FAILED: {result['failed']}")
        elif role == "shadow" and "unlearn_seconds" in result:
            log(f"  shadow {shadow}: {spec.method} in {result['unlearn_seconds']:.1f} s")
        elif "failed" in result:
            raise UnlearnError(f"scoring the {role} model failed: {result['failed']}")

    results = run_tasks(jobs, spec.parallel, progress)
    return {"wall_seconds": time.perf_counter() - started,
            "shadows": {i: results[("shadow", i)] for i in served},
            "models": {role: result for (role, shadow), result in results.items() if role != "shadow"}}


def _figures(spec: AuditSpec, candidates: Candidates, scored: dict, usable: list, halves: dict,
             forget_sets: dict) -> dict:
    """The attack fitted on the usable shadows, applied to the target and the anchors; the shadow trials."""
    from pipeline.metrics.mia import mia_member_rate

    shadow_phi = np.stack([scored["shadows"][i]["phi"] for i in usable])
    unlearned, never_seen = group_masks(candidates, halves, forget_sets, usable)
    try:
        attack = ulira.fit_attack(spec.variant, shadow_phi, unlearned, never_seen)
    except ValueError as exc:  # too few shadow scores left to fit a group
        raise UnlearnError(f"U-LiRA cannot fit its Gaussians from {len(usable)} shadows: {exc}") from exc
    target = scored["models"]["target"]

    def evaluate(phi, with_attack: ulira.Attack = attack) -> dict:
        return ulira.evaluate_target(with_attack, phi, candidates.is_positive, candidates.is_negative, spec.fprs,
                                     spec.resamples, spec.seed)

    figures = {"target": evaluate(target["phi"])}
    if spec.variant == ulira.ONLINE:
        positives, negatives = ulira.shadow_trial_scores(shadow_phi, unlearned, never_seen)
        figures["shadow_trials"] = ulira.attack_figures(positives, negatives, spec.fprs, spec.resamples, spec.seed)
    entropies = target["entropies"]
    figures["entropy_mia"] = {
        "mia": mia_member_rate(entropies["retain"], entropies["test"], entropies["forget"], spec.seed),
        "mia_unseen": mia_member_rate(entropies["retain"], entropies["test"], entropies["unseen"], spec.seed)}
    offline = attack if spec.variant == ulira.OFFLINE else ulira.fit_attack(ulira.OFFLINE, shadow_phi, unlearned,
                                                                            never_seen)
    figures["anchors"] = _anchors(spec, scored["models"], attack, offline, evaluate)
    figures["trusted"], figures["warnings"] = _trust(figures["anchors"])
    figures["pooled_variance"] = bool(attack.never_seen.pooled)
    figures["samples"] = _samples(candidates, target["phi"], attack.score(target["phi"]))
    return figures


def _anchors(spec: AuditSpec, models: dict, attack: ulira.Attack, offline: ulira.Attack, evaluate) -> dict:
    """The sanity anchors (DESIGN.md §5), each with the statistic that can fail it:

    - the original (it trained on D_f) by the offline statistic, "D_f scores above what never-seen data gives":
      the bank must see the original's memory, or its shadows do not reproduce the original (another recipe or
      model) and nothing it says can be trusted. Not by the online ratio: that one tests "unlearned by this
      method" against "never seen", and a model that unlearned nothing is neither (measured: LoTUS's unlearned
      scores sit in a narrow band, so the original's far higher ones read as "never seen", AUC 0.16, while the
      same ratio found LoTUS's own model at 0.75). The online ratio on the original is reported beside it.
    - the retrained model (it never saw D_f) by the audit's own statistic: it must not call it attackable.
    """
    anchors = {}
    if "original" in models:
        original = evaluate(models["original"]["phi"], offline)
        original.update(statistic=ulira.OFFLINE, passed=bool(ulira.original_is_attackable(original)))
        if spec.variant == ulira.ONLINE:
            original["online_auc"] = evaluate(models["original"]["phi"])["auc"]
        anchors["original"] = original
    if "gold" in models:
        gold = evaluate(models["gold"]["phi"])
        gold.update(statistic=spec.variant, passed=bool(ulira.retrained_is_not_attackable(gold)))
        anchors["gold"] = gold
    return anchors


def _trust(anchors: dict) -> tuple[bool | None, list[str]]:
    """True when both anchors passed, False when one failed (the figures must not be trusted), None when not run."""
    warnings = []
    if "original" in anchors and not anchors["original"]["passed"]:
        warnings.append(f"the shadows cannot tell the ORIGINAL model's D_f from never-seen samples (offline AUC "
                        f"{_interval_text(anchors['original']['auc'])}): they do not reproduce its memorisation (is "
                        "--recipe the original's?), so a low AUC on the target proves nothing. DO NOT TRUST these "
                        "figures")
    if "gold" in anchors and not anchors["gold"]["passed"]:
        warnings.append(f"the attack calls a model RETRAINED WITHOUT D_f attackable (AUC "
                        f"{_interval_text(anchors['gold']['auc'])}, interval excludes 0.5): it sees differences "
                        "that are not memory. DO NOT TRUST these figures")
    if warnings:
        return False, warnings
    if set(anchors) != {"original", "gold"}:
        missing = " and ".join(f"--{role}" for role in ("original", "gold") if role not in anchors)
        return None, [f"sanity anchors not checked: pass {missing} to show the attack separates a model that "
                      "remembers D_f from one that never saw it"]
    return True, []


def _samples(candidates: Candidates, phi: np.ndarray, scores: np.ndarray) -> list[dict]:
    """Every audited sample with its role, φ and attack score: which forgotten samples stay exposed."""
    return [{"sample_id": sample_id, "label": int(label), "role": "forgotten" if positive else "never_seen",
             "phi": float(margin), "score": None if np.isnan(score) else float(score)}
            for sample_id, label, positive, margin, score in
            zip(candidates.sample_ids, candidates.labels, candidates.is_positive, phi, scores)]


def _group_counts(candidates: Candidates, usable: list, halves: dict, forget_sets: dict, variant: str) -> dict:
    """Per candidate, how many shadows gave an "unlearned" and a "never seen" score (min / median / max)."""
    never_seen = np.sum([~halves[i] for i in usable], axis=0)
    counts = {"never_seen": _spread(never_seen)}
    if variant == ulira.ONLINE:
        per_sample = defaultdict(int)
        for i in usable:
            for sample_id in forget_sets[i]:
                per_sample[sample_id] += 1
        counts["unlearned"] = _spread(np.array([per_sample[i] for i in candidates.sample_ids]))
        counts["forget_set_sizes"] = [len(forget_sets[i]) for i in usable]
    return counts


def _spread(values: np.ndarray) -> dict:
    return {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}


def _header(spec: AuditSpec, settings: dict, recipe: dict, meta, model_spec, candidates: Candidates) -> dict:
    return {"variant": spec.variant, "method": spec.method, "settings": settings, "recipe": recipe,
            "data": spec.data.uri, "dataset": meta.name, "model": spec.model, "model_name": model_spec.name,
            "forget": spec.forget, "seed": spec.seed, "original": spec.original, "gold": spec.gold,
            "fprs": list(spec.fprs), "positives": int(candidates.is_positive.sum()),
            "negatives": int(candidates.is_negative.sum())}


# ---- words ------------------------------------------------------------------------------------------------------

def _interval_text(figure: dict | None, digits: int = 3) -> str:
    if figure is None:
        return "—"
    return f"{figure['value']:.{digits}f} [{figure['low']:.{digits}f}, {figure['high']:.{digits}f}]"


def figure_line(label: str, figures: dict) -> str:
    tprs = "  ".join(f"TPR@{float(fpr) * 100:g}%FPR {_interval_text(value)}"
                     for fpr, value in figures["tpr_at_fpr"].items())
    return (f"{label}: AUC {_interval_text(figures['auc'])}  {tprs}  balanced accuracy "
            f"{_interval_text(figures['balanced_accuracy'])}  ({figures['positives']} vs {figures['negatives']})")


def summary_lines(result: dict) -> list[str]:
    """The audit in a few lines, the variant named in each figure's label."""
    bank = result["bank"]
    lines = [f"U-LiRA ({result['variant']}, {result['method']}, {bank['shadows_served']} of "
             f"{bank['shadows_requested']} shadows served; trained now: {len(bank['trained_now'])})",
             figure_line(f"  target ({result['variant']})", result["target"])]
    if "shadow_trials" in result:
        lines.append(figure_line(f"  shadow trials ({result['variant']}, the method over {bank['shadows_served']} "
                                 "shadows)", result["shadow_trials"]))
    mia = result["entropy_mia"]
    lines.append(f"  entropy MIA (for comparison): {mia['mia']:.3f} of D_f called member, "
                 f"{mia['mia_unseen']:.3f} of never-seen val")
    for role, anchor in result["anchors"].items():
        expected = "attackable" if role == "original" else "not attackable"
        line = (f"  sanity anchor {role} ({anchor['statistic']}): AUC {_interval_text(anchor['auc'])} -> "
                f"{'passed' if anchor['passed'] else 'FAILED'} (must be {expected})")
        if anchor.get("online_auc"):
            line += f"; online ratio on it: AUC {_interval_text(anchor['online_auc'])}"
            if anchor["online_auc"]["high"] < 0.5:
                line += f" (it does not look unlearned by {result['method']}: the method's trace is not plain memory)"
        lines.append(line)
    exposed = sorted((sample for sample in result["samples"] if sample["role"] == "forgotten"
                      and sample["score"] is not None), key=lambda sample: -sample["score"])[:SHOWN_EXPOSED]
    if exposed:
        lines.append(f"  most exposed forgotten samples (attack score): "
                     + ", ".join(f"{sample['sample_id']} ({sample['score']:.2f})" for sample in exposed))
    lines.extend(f"  WARNING: {warning}" for warning in result["warnings"])
    if result["trusted"]:
        lines.append("  both sanity anchors passed: the attack separates remembering from never having seen")
    return lines


# ---- as result-record metrics (the bench's U-LiRA columns, MLflow) -----------------------------------------------

def fpr_key(fpr: float) -> str:
    """0.01 → "1pct", 0.001 → "0_1pct": metric names without dots (records flatten nested keys with dots)."""
    return f"{fpr * 100:g}".replace(".", "_") + "pct"


def record_metrics(result: dict) -> dict:
    """An audit's figures as flat numbers for a result record: the target's AUC (with its interval) and balanced
    accuracy, the shadow trials' AUC and TPR at each FPR (online), the entropy MIA's never-seen rate, and whether
    the sanity anchors passed (1, 0, or None when they were not run)."""
    target = result["target"]
    metrics = {"ulira_auc": target["auc"]["value"], "ulira_auc_low": target["auc"]["low"],
               "ulira_auc_high": target["auc"]["high"],
               "ulira_balanced_accuracy": target["balanced_accuracy"]["value"],
               "ulira_shadows": result["bank"]["shadows_served"],
               "ulira_trusted": None if result["trusted"] is None else float(result["trusted"])}
    for fpr, figure in target["tpr_at_fpr"].items():
        metrics[f"ulira_tpr_{fpr_key(float(fpr))}"] = figure["value"] if figure else None
    trials = result.get("shadow_trials")
    metrics["ulira_shadow_auc"] = trials["auc"]["value"] if trials else None
    for fpr in result["fprs"]:
        figure = trials["tpr_at_fpr"].get(f"{fpr:g}") if trials else None
        metrics[f"ulira_shadow_tpr_{fpr_key(fpr)}"] = figure["value"] if figure else None
    return metrics
