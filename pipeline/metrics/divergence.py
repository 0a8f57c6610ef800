"""KL and Jensen-Shannon divergences (natural logs), and RF-JSD from per-class probability sums.

Everything is row-wise on probability tensors and computed in float64: per-sample
divergences are summed over whole splits, and float32 rounding there would show
up at the 1e-4 scale the paper reports JSD in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LN2 = math.log(2.0)


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Row-wise KL(p‖q) = Σ p log(p/q) with 0·log 0 = 0; +inf where p > 0 meets q = 0."""
    p, q = p.double(), q.double()
    terms = torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p))
    return terms.sum(dim=-1)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Row-wise JS(p‖q) = ½KL(p‖m) + ½KL(q‖m), m = ½(p+q); symmetric, in [0, ln 2]."""
    p, q = p.double(), q.double()
    m = 0.5 * (p + q)  # m > 0 wherever p or q is, so neither KL term is infinite
    js = 0.5 * kl_divergence(p, m) + 0.5 * kl_divergence(q, m)
    # The bounds hold exactly in real arithmetic; clamping removes only rounding noise (e.g. -1e-17 for p == q).
    return js.clamp(0.0, LN2)


@dataclass(frozen=True)
class RetrainFreeJsd:
    """RF-JSD and the classes it averaged over; `excluded` = classes of D_f with no D_u sample to compare with."""

    value: float | None
    classes: list[int]
    excluded: list[int]


def retrain_free_jsd(forget_class_sums: torch.Tensor, forget_class_counts: torch.Tensor,
                     unseen_class_sums: torch.Tensor, unseen_class_counts: torch.Tensor) -> RetrainFreeJsd:
    """Mean over the classes present in D_f of JS(P_c‖Q_c).

    P_c = mean of p_unlearned over D_f samples of class c, Q_c = mean of p_original over D_u
    samples of class c; both come from [C, C] sums of probability vectors (row c = true class c)
    and [C] counts, which is what makes the metric reducible across workers by summation.
    A class of D_f without any D_u sample has no Q_c: it is excluded and listed, never
    compared with a made-up reference.
    """
    classes, excluded, forget_means, unseen_means = class_means(forget_class_sums, forget_class_counts,
                                                                unseen_class_sums, unseen_class_counts)
    if not classes:
        return RetrainFreeJsd(None, [], excluded)
    value = js_divergence(forget_means, unseen_means).mean().item()
    return RetrainFreeJsd(value, classes, excluded)


def class_means(forget_class_sums: torch.Tensor, forget_class_counts: torch.Tensor, unseen_class_sums: torch.Tensor,
                unseen_class_counts: torch.Tensor) -> tuple[list[int], list[int], torch.Tensor, torch.Tensor]:
    """(classes compared, classes of D_f excluded for want of D_u samples, [k, C] P_c, [k, C] Q_c) of RF-JSD."""
    present = forget_class_counts > 0
    comparable = present & (unseen_class_counts > 0)
    classes = torch.nonzero(comparable).flatten()
    excluded = torch.nonzero(present & ~comparable).flatten().tolist()
    forget_means = forget_class_sums[classes].double() / forget_class_counts[classes].double().unsqueeze(1)
    unseen_means = unseen_class_sums[classes].double() / unseen_class_counts[classes].double().unsqueeze(1)
    return classes.tolist(), excluded, forget_means, unseen_means
