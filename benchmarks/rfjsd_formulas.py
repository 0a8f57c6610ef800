"""Analysis: PCC(RF-JSD, JSD) with this project's divergences and with the public reference code's, side by side.

    python -m benchmarks.rfjsd_formulas --run runs/bench/digits/3seeds

The LoTUS paper's PCC (0.92 ± 0.04) was computed with its public code, whose JS divergence takes
KL(M‖P) + KL(M‖Q) (the reverse of JS's KL(P‖M) + KL(Q‖M)) on probabilities clamped at 1e-8, and divides
by the set size twice (a constant per forget set, so it leaves a per-seed PCC unchanged). The reversed KL
is large wherever a model puts ~0 mass on a class the other model predicts, so it scores confident models
far worse than smooth ones, much as RF-JSD does. This recomputes, for every (method, seed) checkpoint of
a benchmark run, JSD and RF-JSD with both formulas on the same models and prints the four correlations.
It is an analysis of the metric, not a metric: the project reports the correct divergence (DESIGN §5).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from jobs.validate_rfjsd import pearson
from pipeline.data.local import load_sources
from pipeline.metrics.divergence import class_means, js_divergence, retrain_free_jsd
from pipeline.metrics.floor import class_probability_sums, predict_probabilities
from pipeline.models import load_checkpoint
from pipeline.results.records import load_records

CPU = torch.device("cpu")
REFERENCE_CLAMP = 1e-8


def reference_js(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Row-wise ½KL(M‖P) + ½KL(M‖Q) on rows clamped at 1e-8 and renormalised: the public code's formula
    without its constant 1/N² (the reversed KL is the point of this comparison, not a metric to report)."""
    p = p.double().clamp(REFERENCE_CLAMP, 1.0)
    q = q.double().clamp(REFERENCE_CLAMP, 1.0)
    p, q = p / p.sum(dim=1, keepdim=True), q / q.sum(dim=1, keepdim=True)
    m = 0.5 * (p + q)
    return 0.5 * ((m * (m.log() - p.log())).sum(dim=1) + (m * (m.log() - q.log())).sum(dim=1))


def seed_points(records: list) -> list[dict]:
    """JSD and RF-JSD with both formulas for every record of one seed that has a checkpoint and a gold model."""
    first = records[0]
    data_uri, original_uri, gold_uri = (first.config.get(key) for key in ("data", "original", "gold"))
    sources, _ = load_sources(data_uri, spec=first.forget_spec, seed=first.seed, verify=False)
    forget, unseen = sources["forget"], sources["unseen"]
    unseen_probs, unseen_labels = predict_probabilities(load_checkpoint(original_uri)[0], unseen, CPU)
    classes = unseen_probs.shape[1]
    unseen_sums, unseen_counts = class_probability_sums(unseen_probs, unseen_labels, classes)
    gold_probs, _ = predict_probabilities(load_checkpoint(gold_uri)[0], forget, CPU)
    checkpoints = {record.method: record.checkpoint_uri for record in records if record.checkpoint_uri}
    checkpoints["retrain"] = gold_uri
    points = []
    for method, uri in sorted(checkpoints.items()):
        probs, labels = predict_probabilities(load_checkpoint(uri)[0], forget, CPU)
        sums, counts = class_probability_sums(probs, labels, classes)
        _, _, p_means, q_means = class_means(sums, counts, unseen_sums, unseen_counts)
        points.append({"method": method, "seed": first.seed,
                       "jsd": js_divergence(probs, gold_probs).mean().item(),
                       "rf_jsd": retrain_free_jsd(sums, counts, unseen_sums, unseen_counts).value,
                       "jsd_reference": reference_js(probs, gold_probs).mean().item(),
                       "rf_jsd_reference": reference_js(p_means, q_means).mean().item()})
    return points


def correlations(points: list[dict]) -> dict:
    column = lambda key: [point[key] for point in points]  # noqa: E731
    return {"JSD ~ RF-JSD (this project)": pearson(column("jsd"), column("rf_jsd")),
            "reference JSD ~ RF-JSD": pearson(column("jsd_reference"), column("rf_jsd")),
            "reference JSD ~ reference RF-JSD (the paper's)": pearson(column("jsd_reference"),
                                                                      column("rf_jsd_reference")),
            "JSD ~ reference RF-JSD": pearson(column("jsd"), column("rf_jsd_reference"))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a benchmark run with a gold model and its checkpoints")
    args = parser.parse_args(argv)
    by_seed = defaultdict(list)
    for record in load_records(args.run):
        if record.kind == "unlearn" and record.config.get("gold") and record.config.get("data"):
            by_seed[record.seed].append(record)
    if not by_seed:
        raise SystemExit(f"{args.run}: no unlearning records with a gold model and data to recompute")
    points = []
    for seed in sorted(by_seed):
        points += seed_points(by_seed[seed])
    print(f"{len(points)} (method, seed) points from {args.run}")
    for label, subset in (("all points", points),
                          ("without the retrained model", [p for p in points if p["method"] != "retrain"])):
        print(f"PCC over {label}:")
        for name, value in correlations(subset).items():
            print(f"  {name:<48} {value:.3f}")
    for seed in sorted(by_seed):
        values = correlations([p for p in points if p["seed"] == seed])
        print(f"seed {seed}: " + ", ".join(f"{name} {value:.3f}" for name, value in values.items()))


if __name__ == "__main__":
    main()
