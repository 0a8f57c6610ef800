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

from pipeline.data.sources import BatchSource
from pipeline.metrics.accumulate import probabilities
from pipeline.metrics.divergence import retrain_free_jsd


@dataclass(frozen=True)
class RfJsdFloor:
    """Mean and spread of RF-JSD over the draws, the classes drawn, and those drawn with replacement."""

    mean: float
    std: float
    draws: int
    classes: list[int]
    with_replacement: list[int]  # classes with fewer D_test than D_f samples
    missing: list[int]  # classes of D_f with no D_test or no D_u sample: not part of the floor


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
                 unseen_class_sums: torch.Tensor, unseen_class_counts: torch.Tensor, draws: int = 200,
                 seed: int = 0) -> RfJsdFloor | None:
    """RF-JSD of `test_probs` (the original on D_test) drawn with D_f's class counts, against Q_c from D_u.

    Each draw takes, for every class c of D_f, n_c = |D_f ∩ c| samples of class c from D_test (without
    replacement where D_test has that many, with replacement otherwise). None when no class can be drawn.
    """
    if draws < 1:
        raise ValueError(f"the RF-JSD floor needs at least one draw, not {draws}")
    num_classes = unseen_class_sums.shape[0]
    labels = test_labels.cpu().numpy()
    by_class = {c: np.flatnonzero(labels == c) for c in range(num_classes)}
    wanted = [c for c in range(num_classes) if int(forget_class_counts[c]) > 0]
    classes = [c for c in wanted if len(by_class[c]) and int(unseen_class_counts[c]) > 0]
    if not classes:
        return None
    sizes = {c: int(forget_class_counts[c]) for c in classes}
    with_replacement = [c for c in classes if len(by_class[c]) < sizes[c]]
    probs, labels = test_probs.double().cpu(), test_labels.cpu().long()
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        rows = torch.from_numpy(np.concatenate([rng.choice(by_class[c], sizes[c], replace=c in with_replacement)
                                                for c in classes]))
        sums, counts = class_probability_sums(probs[rows], labels[rows], num_classes)
        values.append(retrain_free_jsd(sums, counts, unseen_class_sums.cpu(), unseen_class_counts.cpu()).value)
    return RfJsdFloor(float(np.mean(values)), float(np.std(values)), draws, classes, with_replacement,
                      sorted(set(wanted) - set(classes)))
