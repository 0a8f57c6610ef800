"""U-LiRA in the bench's results (no Ray): an audit's figures as record metrics, mean ± std over seeds, and the
membership table beside the entropy MIA with its untrusted mark."""

import pytest

from pipeline.results.aggregate import summarize, summary_frame
from pipeline.results.tables import UNTRUSTED, markdown_table
from pipeline.runs.audit_mia import fpr_key, record_metrics
from tests.test_results import make_record


def audit_result(auc: float, shadow_tpr: float | None, trusted: bool | None) -> dict:
    """The parts of an audit's ulira.json that record_metrics reads."""
    interval = {"value": auc, "low": auc - 0.05, "high": auc + 0.05}
    target = {"auc": interval, "balanced_accuracy": interval, "tpr_at_fpr": {"0.01": None}}
    trials = None if shadow_tpr is None else {"auc": interval, "tpr_at_fpr": {"0.01": {"value": shadow_tpr}}}
    return {"target": target, "shadow_trials": trials, "bank": {"shadows_served": 16}, "trusted": trusted,
            "fprs": [0.01]}


def test_record_metrics_are_flat_numbers_named_without_dots():
    metrics = record_metrics(audit_result(0.62, 0.04, True))
    assert metrics["ulira_auc"] == 0.62 and metrics["ulira_auc_low"] == pytest.approx(0.57)
    assert metrics["ulira_shadow_tpr_1pct"] == 0.04 and metrics["ulira_tpr_1pct"] is None  # 80 negatives: none
    assert metrics["ulira_trusted"] == 1.0 and metrics["ulira_shadows"] == 16
    assert all("." not in key for key in metrics)
    offline = record_metrics(audit_result(0.55, None, None))
    assert offline["ulira_shadow_auc"] is None and offline["ulira_trusted"] is None
    assert fpr_key(0.001) == "0_1pct"


def records_with_audits():
    records = []
    for seed, (lotus_auc, trusted) in enumerate([(0.56, True), (0.60, False)]):
        records.append(make_record("original", seed, mia=0.8, mia_unseen=0.28))
        records.append(make_record("lotus", seed, mia=0.17, mia_unseen=0.25,
                                   **record_metrics(audit_result(lotus_auc, 0.02 * (seed + 1), trusted))))
        records.append(make_record("finetune", seed, mia=0.3, mia_unseen=0.26,
                                   **record_metrics(audit_result(0.58, 0.05, True))))
    return records


def test_the_membership_table_sits_beside_the_results_with_means_over_seeds():
    summaries = summarize(records_with_audits(), method_order=["finetune", "lotus"])
    text = markdown_table(summaries)
    assert "#### Membership: entropy MIA and U-LiRA" in text
    table = text.split("#### Membership")[1]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["Method"] == ("| Method | MIA (D_f) | MIA (never seen) | U-LiRA AUC | U-LiRA AUC (shadows) "
                              "| TPR@1%FPR (shadows) |")
    assert rows[f"lotus {UNTRUSTED}"] == ("| lotus † | 0.170 ± 0.000 | 0.250 ± 0.000 | 0.580 ± 0.028 "
                                           "| 0.580 ± 0.028 | 0.030 ± 0.014 |")
    assert rows["original"].endswith("| 0.800 ± 0.000 | 0.280 ± 0.000 | — | — | — |")  # a reference: not audited
    assert rows["finetune"].startswith("| finetune | ")  # both seeds trusted: no mark
    assert "a sanity anchor failed in some seed (lotus)" in table
    frame = summary_frame(summaries).set_index("method")
    assert frame.loc["lotus", "ulira_auc_mean"] == pytest.approx(0.58)
    assert frame.loc["lotus", "ulira_trusted_mean"] == pytest.approx(0.5)


def test_no_membership_table_without_audits():
    assert "Membership" not in markdown_table(summarize([make_record("lotus", 0), make_record("original", 0)]))


def test_a_nightly_band_on_the_ulira_auc_flags_a_rise_only():
    from pipeline.results.regression import compare, validate_bands

    bands = {"ulira_auc": {"max_rise": 0.03}}
    validate_bands(bands)
    before = records_with_audits()
    worse = [make_record(r.method, r.seed, **{**r.metrics, "ulira_auc": r.metrics["ulira_auc"] + 0.05})
             if "ulira_auc" in r.metrics else r for r in before]
    better = [make_record(r.method, r.seed, **{**r.metrics, "ulira_auc": r.metrics["ulira_auc"] - 0.05})
              if "ulira_auc" in r.metrics else r for r in before]
    flagged = [found for found in compare(worse, before, bands) if found.kind == "band"]
    assert {found.method for found in flagged} == {"lotus", "finetune"}
    assert not [found for found in compare(better, before, bands) if found.kind == "band"]
