"""The diffusion family's metrics as flat record entries (records.parquet flattens `metrics` one level deep)."""

from __future__ import annotations

# The poster's columns, in order (pipeline/results/tables.py renders them).
POSTER_METRICS = ("gen_acc_forget", "gen_acc_retain", "fid_proxy", "unlearn_minutes", "peak_memory_mb")


def flat_metrics(evaluation: dict, run_result: dict | None = None) -> dict:
    """Scalars only: generation accuracies, FID proxy (and Inception FID), noise statistics, the relearning
    attack's curve, time and memory of the run that made the model."""
    out = {"gen_acc_forget": evaluation["acc_forget_gen"], "gen_acc_retain": evaluation["acc_retain_gen"],
           "fid_proxy": evaluation["fid_proxy"], "fid_inception": evaluation.get("fid_inception"),
           "samples_per_class": evaluation["samples_per_class"], "sampling_steps": evaluation["sampling_steps"],
           "guidance": evaluation["guidance"]}
    out.update({f"gen_acc_class_{c}": value for c, value in evaluation["acc_gen_per_class"].items()})
    for part in ("forget", "retain"):
        out.update({f"{part}_{key}": value for key, value in evaluation[f"noise_{part}"].items()})
    out.update({f"relearn_acc_{steps}": value for steps, value in evaluation.get("relearn", {}).items()})
    if run_result:
        seconds = run_result.get("unlearn_seconds")
        out["unlearn_minutes"] = seconds / 60 if seconds is not None else None
        out["peak_memory_mb"] = run_result.get("peak_memory_mb")
        out["peak_memory_kind"] = run_result.get("peak_memory_kind")
    return out
