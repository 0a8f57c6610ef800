"""Accuracy, MIA, JSD, RF-JSD and Avg Gap from one batched pass per model per split.

Metrics know nothing about methods or Ray: they consume logits and labels and
reduce across workers through `pipeline.distributed`.

    result = evaluate({"unlearned": model, "original": original, "gold": retrained}, sources, device, num_classes)
    record_metrics = summarize(result, seed)
"""

from pipeline.metrics.accumulate import PairStats, SplitStats, sample_keys, softmax_entropy
from pipeline.metrics.divergence import RetrainFreeJsd, js_divergence, kl_divergence, retrain_free_jsd
from pipeline.metrics.evaluate import EvalPlan, EvalResult, default_plan, evaluate
from pipeline.metrics.mia import mia_member_rate
from pipeline.metrics.summary import avg_gap, model_metrics, summarize

__all__ = ["EvalPlan", "EvalResult", "PairStats", "RetrainFreeJsd", "SplitStats", "avg_gap", "default_plan",
           "evaluate", "js_divergence", "kl_divergence", "mia_member_rate", "model_metrics", "retrain_free_jsd",
           "sample_keys", "softmax_entropy", "summarize"]
