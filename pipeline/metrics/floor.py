"""The RF-JSD that a model which never saw D_f would score: RF-JSD's sampling floor at D_f's class counts.

RF-JSD compares P_c, a mean over the D_f samples of class c, with Q_c, a mean over D_u. A model that never
saw D_f still does not score 0: the mean of a few sharp predictions is lumpy (on digits-hard, 8 forget
samples per class, the floor is about 300e-4 and the retrained model scores about 380e-4). The floor is
estimated without a retrained model: the original has never seen D_test either, so RF-JSD of its
predictions on random draws from D_test with D_f's per-class counts, against the same Q_c, is what a
perfectly unlearned model would score by sampling alone. A method scoring well below it is smoother on
D_f than unseen data looks, which RF-JSD rewards but which is not better forgetting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pipeline import distributed
from pipeline.data.sources import BatchSource
from pipeline.metrics.accumulate import probabilities
from pipeline.metrics.divergence import retrain_free_jsd

# Draws x classes x classes float64 sums per worker: cap them near 160 MB (ImageNet-1k: 20 draws).
FLOOR_SUM_BUDGET = 20_000_000
MAX_DRAWS = 200


def default_floor_draws(num_classes: int) -> int:
    """200 draws where the per-draw class sums are small, fewer (at least 10) for many classes."""
    return int(min(MAX_DRAWS, max(10, FLOOR_SUM_BUDGET // num_classes ** 2)))


@dataclass(frozen=True)
class RfJsdFloor:
    """Mean and spread of RF-JSD over the draws, the classes drawn, and those drawn with replacement."""

    mean: float
    std: float
    draws: int
    classes: list[int]
    with_replacement: list[int]  # classes with fewer D_test than D_f samples
    missing: list[int]  # classes of D_f with no D_test or no D_u sample: not part of the floor


@dataclass(frozen=True)
class FloorDraws:
    """Which D_test samples every draw takes: `weights[i, r]` = times `sample_ids[i]` is in draw r."""

    sample_ids: tuple[str, ...]
    weights: np.ndarray  # [N, R] int32
    class_sizes: np.ndarray  # [C] n_c = |D_f ∩ c| for the classes drawn, 0 elsewhere
    classes: list[int]
    with_replacement: list[int]
    missing: list[int]

    @property
    def draws(self) -> int:
        return self.weights.shape[1]


def plan_floor_draws(sample_ids, labels, forget_class_counts, unseen_class_counts, draws: int,
                     seed: int = 0) -> FloorDraws | None:
    """Seeded draws from D_test (`sample_ids`, `labels`) with D_f's per-class counts; None if no class can be drawn.

    Each draw takes, for every class c of D_f that D_test and D_u both have, n_c samples of class c from
    D_test (without replacement where D_test has that many, with replacement otherwise). Samples are
    taken in sample-id order, so the plan does not depend on the order the ids come in.
    """
    if draws < 1:
        raise ValueError(f"the RF-JSD floor needs at least one draw, not {draws}")
    forget_counts, unseen_counts = np.asarray(forget_class_counts), np.asarray(unseen_class_counts)
    ids, labels = np.asarray(sample_ids, dtype=object), np.asarray(labels)
    order = np.argsort(ids.astype(str), kind="stable")
    ids, labels = ids[order], labels[order]
    by_class = {c: np.flatnonzero(labels == c) for c in range(len(forget_counts))}
    wanted = [c for c in range(len(forget_counts)) if forget_counts[c] > 0]
    classes = [c for c in wanted if len(by_class[c]) and unseen_counts[c] > 0]
    if not classes:
        return None
    with_replacement = [c for c in classes if len(by_class[c]) < forget_counts[c]]
    weights = np.zeros((len(ids), draws), dtype=np.int32)
    rng = np.random.default_rng(seed)
    for draw in range(draws):
        for c in classes:
            rows = rng.choice(by_class[c], int(forget_counts[c]), replace=c in with_replacement)
            np.add.at(weights[:, draw], rows, 1)
    sizes = np.zeros(len(forget_counts), dtype=np.int64)
    sizes[classes] = forget_counts[classes]
    return FloorDraws(tuple(str(i) for i in ids), weights, sizes, classes, with_replacement,
                      sorted(set(wanted) - set(classes)))


class FloorSums:
    """Per-draw [C, C] sums of p(x) by true class over one worker's D_test samples; reduced by addition."""

    def __init__(self, plan: FloorDraws, num_classes: int, device: torch.device | str = "cpu"):
        self.plan, self.num_classes = plan, num_classes
        self.row_of = {sample_id: row for row, sample_id in enumerate(plan.sample_ids)}
        self.weights = torch.tensor(plan.weights)  # a copy: arrays that came through Ray are read-only
        self.sums = torch.zeros(plan.draws, num_classes, num_classes, dtype=torch.float64, device=device)
        self.reduced = False

    def update(self, logits: torch.Tensor, labels: torch.Tensor, sample_ids) -> None:
        self.add_probabilities(probabilities(logits.to(self.sums.device)), labels, sample_ids)

    def add_probabilities(self, probs: torch.Tensor, labels: torch.Tensor, sample_ids) -> None:
        if self.reduced:
            raise RuntimeError("FloorSums.update after reduce()")
        rows = torch.tensor([self.row_of.get(str(i), -1) for i in sample_ids], dtype=torch.int64)
        known = rows >= 0  # a D_test sample outside the plan is in no draw
        weights = torch.zeros(len(rows), self.plan.draws, dtype=torch.int32)
        weights[known] = self.weights[rows[known]]
        sample, draw = torch.nonzero(weights, as_tuple=True)  # only (sample, draw) pairs that count
        if not len(sample):
            return
        device = self.sums.device
        probs = probs.to(device, torch.float64)
        flat_rows = draw.to(device) * self.num_classes + labels.to(device)[sample.to(device)]
        values = weights[sample, draw].to(device, torch.float64).unsqueeze(1) * probs[sample.to(device)]
        self.sums.view(-1, self.num_classes).index_add_(0, flat_rows, values)

    def reduce(self) -> "FloorSums":
        if self.reduced:
            raise RuntimeError("FloorSums.reduce called twice")
        distributed.all_reduce_sum(self.sums)
        self.reduced = True
        return self

    def floor(self, unseen_class_sums: torch.Tensor, unseen_class_counts: torch.Tensor) -> RfJsdFloor:
        """RF-JSD of each draw against Q_c (the original on D_u); mean and spread over the draws."""
        counts = torch.tensor(self.plan.class_sizes, dtype=torch.float64)  # a copy: read-only after Ray
        unseen_sums, unseen_counts = unseen_class_sums.double().cpu(), unseen_class_counts.double().cpu()
        values = [retrain_free_jsd(draw_sums.cpu(), counts, unseen_sums, unseen_counts).value for draw_sums in self.sums]
        plan = self.plan
        return RfJsdFloor(float(np.mean(values)), float(np.std(values)), plan.draws, plan.classes,
                          plan.with_replacement, plan.missing)


@torch.no_grad()
def original_floor(original: nn.Module, test: BatchSource, plan: FloorDraws, unseen_class_sums: torch.Tensor,
                   unseen_class_counts: torch.Tensor, device: torch.device, batch_size: int = 256) -> RfJsdFloor:
    """The floor on a cluster: the original over this worker's D_test shard, draws' sums reduced across workers."""
    was_training = original.training
    original.eval()
    sums = FloorSums(plan, unseen_class_sums.shape[0], device)
    for batch in test.batches(batch_size):
        sums.update(original(batch["image"].to(device)), batch["label"], batch["sample_id"])
    original.train(was_training)
    return sums.reduce().floor(unseen_class_sums, unseen_class_counts)


def floor_metrics(floor: RfJsdFloor | None) -> dict:
    """What a result record stores: the floor and its spread, raw and x1e4 (None when it was not computed)."""
    mean, std = (floor.mean, floor.std) if floor else (None, None)
    return {"rf_jsd_floor": mean, "rf_jsd_floor_std": std,
            "rf_jsd_floor_e4": None if mean is None else mean * 1e4,
            "rf_jsd_floor_std_e4": None if std is None else std * 1e4,
            "rf_jsd_floor_draws": floor.draws if floor else None}


@torch.no_grad()
def predict_probabilities(model: nn.Module, source: BatchSource, device: torch.device,
                          batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(p(x) [N, C] float64, labels [N]) on the CPU, in the source's order. Restores the model's mode."""
    was_training = model.training
    model.eval()
    probs, labels = [], []
    for batch in source.batches(batch_size):
        probs.append(probabilities(model(batch["image"].to(device))).cpu())
        labels.append(batch["label"].cpu())
    model.train(was_training)
    return torch.cat(probs), torch.cat(labels).long()


def class_probability_sums(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([C, C] float64 sums of p(x) per true class, [C] float64 counts): what RF-JSD's class means come from."""
    sums = torch.zeros(num_classes, num_classes, dtype=torch.float64).index_add_(0, labels, probs.double())
    return sums, torch.bincount(labels, minlength=num_classes).double()


def rf_jsd_floor(test_probs: torch.Tensor, test_labels: torch.Tensor, forget_class_counts: torch.Tensor,
                 unseen_class_sums: torch.Tensor, unseen_class_counts: torch.Tensor, draws: int = MAX_DRAWS,
                 seed: int = 0, sample_ids=None) -> RfJsdFloor | None:
    """In process: RF-JSD of `test_probs` (the original on D_test) drawn with D_f's class counts, against Q_c.

    `sample_ids` (default: row numbers) fix the draws; with D_test's real ids the floor equals the one
    `unlearn eval` computes across workers for the same seed and number of draws.
    """
    sample_ids = list(range(len(test_labels))) if sample_ids is None else list(sample_ids)
    plan = plan_floor_draws(sample_ids, test_labels.cpu().numpy(), forget_class_counts.cpu().numpy(),
                            unseen_class_counts.cpu().numpy(), draws, seed)
    if plan is None:
        return None
    num_classes = unseen_class_sums.shape[0]
    sums = FloorSums(plan, num_classes)
    sums.add_probabilities(test_probs, test_labels.cpu().long(), sample_ids)
    return sums.floor(unseen_class_sums, unseen_class_counts)


def whole_split_floor(original: nn.Module, sources: dict, device: torch.device, draws: int = MAX_DRAWS,
                      seed: int = 0) -> RfJsdFloor | None:
    """The floor in one process from whole splits (`sources`: "forget", "unseen", "test", with labels and ids).

    Same draws as the workers' for the same seed and number of draws (they are planned from D_test's ids).
    """
    unseen_probs, unseen_labels = predict_probabilities(original, sources["unseen"], device)
    num_classes = unseen_probs.shape[1]
    unseen_sums, unseen_counts = class_probability_sums(unseen_probs, unseen_labels, num_classes)
    test_probs, test_labels = predict_probabilities(original, sources["test"], device)
    forget_counts = torch.bincount(sources["forget"].labels, minlength=num_classes)
    return rf_jsd_floor(test_probs, test_labels, forget_counts, unseen_sums, unseen_counts, draws=draws, seed=seed,
                        sample_ids=sources["test"].sample_ids)
