"""From reduced statistics to the metrics a result record stores (DESIGN.md §5)."""

from __future__ import annotations

from pipeline.metrics.divergence import retrain_free_jsd
from pipeline.metrics.evaluate import (FORGET, GOLD, ORIGINAL, RETAIN, TEST, UNLEARNED, UNSEEN, EvalResult)
from pipeline.metrics.mia import mia_member_rate

PAPER_SCALE = 1e4  # the paper reports JSD and RF-JSD x 1e4
GAP_KEYS = ("acc_forget", "acc_retain", "acc_test", "mia")


def model_metrics(result: EvalResult, model: str, seed: int, mia_max_per_class: int | None = None) -> dict:
    """Accuracies and true-class confidences on every split the model ran on (None elsewhere), its MIA member
    rate on D_f, and the same attack's member rate on D_u (`mia_unseen`: what "looks unseen" means for the MIA)."""
    metrics = {}
    for split in (FORGET, RETAIN, TEST, UNSEEN):
        stats = result.stats(model, split)
        metrics[f"acc_{split}"] = stats.accuracy if stats else None
        metrics[f"confidence_{split}"] = _true_class_confidence(stats) if stats else None
    metrics["mia"] = _mia(result, model, seed, mia_max_per_class)
    metrics["mia_unseen"] = _mia(result, model, seed, mia_max_per_class, targets=UNSEEN)
    metrics["forget_classes"], metrics["acc_forget_per_class"] = _per_class_accuracy(result.stats(model, FORGET))
    return metrics


def _per_class_accuracy(stats) -> tuple[list[int], list[float]]:
    """The classes present in D_f and the model's accuracy on each (two aligned lists: they store flat)."""
    if stats is None:
        return [], []
    counts, correct = stats.class_counts.cpu().numpy(), stats.class_correct.cpu().numpy()
    classes = [int(c) for c in counts.nonzero()[0]]
    return classes, [float(correct[c] / counts[c]) for c in classes]


def _true_class_confidence(stats) -> float | None:
    """Mean probability the model gives a sample's true class (the diagonal of the per-class probability sums)."""
    count = int(stats.class_counts.sum())
    return float(stats.class_prob_sums.diagonal().sum()) / count if count else None


def _mia(result: EvalResult, model: str, seed: int, max_per_class: int | None, targets: str = FORGET) -> float | None:
    members, nonmembers, targets = (result.stats(model, split) for split in (RETAIN, TEST, targets))
    if not (members and nonmembers and targets) or 0 in (members.count, nonmembers.count, targets.count):
        return None
    return mia_member_rate(members.entropies, nonmembers.entropies, targets.entropies, seed, max_per_class)


def avg_gap(metrics: dict, gold_metrics: dict) -> float:
    """¼(|ΔAcc_f| + |ΔAcc_r| + |ΔAcc_test| + |ΔMIA|) against the retrained (gold) model."""
    return sum(abs(metrics[key] - gold_metrics[key]) for key in GAP_KEYS) / len(GAP_KEYS)


def _scaled(value: float | None) -> float | None:
    return None if value is None else value * PAPER_SCALE


def summarize(result: EvalResult, seed: int, mia_max_per_class: int | None = None) -> dict:
    """The unlearned model's metrics plus RF-JSD, and JSD / Avg Gap / the gold row when a gold model ran."""
    summary = model_metrics(result, UNLEARNED, seed, mia_max_per_class)
    forget, unseen = result.stats(UNLEARNED, FORGET), result.stats(ORIGINAL, UNSEEN)
    rf = (retrain_free_jsd(forget.class_prob_sums, forget.class_counts, unseen.class_prob_sums, unseen.class_counts)
          if forget and unseen else None)
    summary.update(rf_jsd=rf.value if rf else None, rf_jsd_classes=rf.classes if rf else [],
                   rf_jsd_excluded_classes=rf.excluded if rf else [])
    summary["rf_jsd_e4"] = _scaled(summary["rf_jsd"])
    summary["split_sizes"] = {split: stats.count for (model, split), stats in sorted(result.split_stats.items())
                              if model == UNLEARNED}

    gold_ran = any(model == GOLD for model, _ in result.split_stats)
    pair = result.pair_stats.get((UNLEARNED, GOLD, FORGET))
    summary["gold"] = gold_ran
    summary["jsd"] = pair.mean if pair else None
    summary["jsd_e4"] = _scaled(summary["jsd"])
    summary["avg_gap"] = None
    if gold_ran:
        gold_metrics = model_metrics(result, GOLD, seed, mia_max_per_class)
        summary["gold_metrics"] = gold_metrics
        if all(summary[key] is not None and gold_metrics[key] is not None for key in GAP_KEYS):
            summary["avg_gap"] = avg_gap(summary, gold_metrics)
    return summary
