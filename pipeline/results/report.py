"""`unlearn report`: records of one or more runs → report.md, report.csv, PNG plots and report.html.

Plots are drawn into a local temp folder (matplotlib writes files) and then
uploaded through pipeline.storage, so out_uri may be local or s3:// alike.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from pathlib import Path

import pandas as pd

from pipeline import storage
from pipeline.errors import DataError
from pipeline.results import plots
from pipeline.results.aggregate import TABLE_KINDS, record_values, summarize
from pipeline.results import exposure
from pipeline.results.html import ULIRA_HEADING, html_ulira_section, render_html
from pipeline.results.records import ResultRecord, load_records
from pipeline.results.regression import compare_with_previous
from pipeline.results.tables import diffusion_markdown, diffusion_summary, is_diffusion, csv_text, markdown_table, markdown_time_tables

DEFAULT_OUT_DIR = "report"
# Axis preferences for sweep heatmaps: LoTUS sweeps alpha × learning rate (DESIGN.md §1).
X_AXIS_NAMES = ("alpha",)
Y_AXIS_NAMES = ("lr", "learning_rate")
NOT_HYPERPARAMETERS = ("seed",)


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def sweep_frame(records: list[ResultRecord]) -> pd.DataFrame:
    """One row per sweep-trial record: method, flattened config ('lotus.alpha'), metrics, feasible."""
    rows = []
    for record in records:
        if record.kind != "sweep-trial":
            continue
        feasible = record.metrics.get("feasible")
        rows.append({**{f"config.{k}": v for k, v in _flatten(record.config).items()},
                     **record_values(record), "rf_jsd": record.metrics.get("rf_jsd"),
                     "method": record.method, "run_id": record.run_id, "seed": record.seed,
                     "feasible": True if feasible is None else bool(feasible)})
    return pd.DataFrame(rows)


def _last_part(column: str) -> str:
    return column.rsplit(".", 1)[-1]


def sweep_axes(trials: pd.DataFrame) -> tuple[str, str] | None:
    """The two config columns a method's sweep varied (alpha and lr preferred), or None if fewer than two."""
    varying = []
    for column in sorted(c for c in trials.columns if c.startswith("config.")):
        values = pd.to_numeric(trials[column], errors="coerce")
        if _last_part(column) not in NOT_HYPERPARAMETERS and values.notna().all() and values.nunique() > 1:
            varying.append(column)
    if len(varying) < 2:
        return None
    x = next((c for c in varying if _last_part(c) in X_AXIS_NAMES), varying[0])
    y = next((c for c in varying if _last_part(c) in Y_AXIS_NAMES and c != x), next(c for c in varying if c != x))
    return x, y


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "x"


def _sweep_plots(records: list[ResultRecord], folder: str) -> dict[str, str]:
    """{caption: local PNG path}, one heatmap per method whose sweep varied two numeric config values."""
    frame = sweep_frame(records)
    written = {}
    for method in sorted(frame["method"].unique()) if not frame.empty else []:
        trials = frame[frame["method"] == method].reset_index(drop=True)
        axes = sweep_axes(trials)
        if axes is None:
            continue
        value = "rf_jsd_e4" if trials["rf_jsd_e4"].notna().any() else "avg_gap"
        if not trials[value].notna().any():
            continue
        path = os.path.join(folder, f"sweep_{_safe_name(method)}.png")
        plots.sweep_plot(trials, path, x=axes[0], y=axes[1], value=value, infeasible_column="feasible",
                         title=f"{method} sweep: {value} of the feasible trials ({len(trials)} trials; × = infeasible)")
        written[f"{method} sweep: {value} over {axes[0]} × {axes[1]}"] = path
    return written


def _runs_by_group(records: list[ResultRecord]) -> dict[tuple, dict[str, list[ResultRecord]]]:
    """The reported unlearning runs (what the tables hold), per (dataset, model, forget spec), per method."""
    groups: dict[tuple, dict[str, list[ResultRecord]]] = {}
    for record in records:
        if record.kind in TABLE_KINDS and record.status == "ok":
            key = (record.dataset, record.model, record.forget_spec)
            groups.setdefault(key, {}).setdefault(record.method, []).append(record)
    return groups


def _unfolding_plots(records: list[ResultRecord], folder: str) -> dict[str, str]:
    """Per group: the per-epoch curves of every method that kept a history, and Acc_f per class for the
    original, every method and the retrained model (means over seeds)."""
    written = {}
    for index, (group, methods) in enumerate(sorted(_runs_by_group(records).items())):
        name = " · ".join(str(part) for part in group)
        histories = {method: [r.config["history"] for r in runs if r.config.get("history")]
                     for method, runs in methods.items()}
        path = plots.epoch_curves({m: h for m, h in histories.items() if h},
                                  os.path.join(folder, f"curves_{index}.png"), title=name)
        if path:
            written[f"How unlearning unfolded, per epoch ({name})"] = path
        ordered = sorted(methods, key=lambda m: (m != "original", m == "retrain"))
        by_class = {method: _mean_per_class(methods[method]) for method in ordered}
        path = plots.forgetting_by_class(by_class, os.path.join(folder, f"classes_{index}.png"),
                                         title=f"Acc_f per class: original, each method, retrained ({name})")
        if path:
            written[f"Forgetting per class ({name})"] = path
    return written


def _mean_per_class(runs: list[ResultRecord]) -> dict[int, float]:
    sums: dict[int, list[float]] = {}
    for record in runs:
        for cls, accuracy in zip(record.metrics.get("forget_classes") or [],
                                 record.metrics.get("acc_forget_per_class") or []):
            sums.setdefault(int(cls), []).append(float(accuracy))
    return {cls: sum(values) / len(values) for cls, values in sums.items()}


def _method_plots(summaries, folder: str) -> dict[str, str]:
    candidates = {
        "Unlearning time vs RF-JSD ×1e4": (plots.time_vs_rf_jsd, "time_vs_rf_jsd.png"),
        "Unlearning time vs Avg Gap": (plots.time_vs_avg_gap, "time_vs_avg_gap.png"),
        "Runtime per phase": (plots.phase_bars, "phases.png"),
    }
    written = {}
    for caption, (draw, name) in candidates.items():
        path = draw(summaries, os.path.join(folder, name))
        if path is not None:
            written[caption] = path
    return written


def _best_trials_table(records: list[ResultRecord]) -> str:
    """Markdown table of each method's sweep: trials, feasible trials, the best feasible RF-JSD and its run."""
    frame = sweep_frame(records)
    if frame.empty:
        return ""
    lines = ["| Method | Trials | Feasible | Best RF-JSD×1e4 | Best trial |", "|---|---:|---:|---:|---|"]
    for method in sorted(frame["method"].unique()):
        trials = frame[frame["method"] == method]
        feasible = trials[trials["feasible"] & trials["rf_jsd_e4"].notna()]
        if feasible.empty:
            best_value, best_id = "—", "—"
        else:
            best = feasible.loc[feasible["rf_jsd_e4"].idxmin()]
            best_value, best_id = f"{best['rf_jsd_e4']:.2f}", best["run_id"]
        lines.append(f"| {method} | {len(trials)} | {int(trials['feasible'].sum())} | {best_value} | {best_id} |")
    return "\n".join(lines) + "\n"


def _markdown(title: str, run_uris: list[str], generated: str, summaries, records, regression_text: str | None,
              images: dict[str, str], extra_sections: list[tuple[str, str]] = ()) -> str:
    parts = [f"# {title}", "", f"Generated {generated} from:", "", *(f"- `{uri}`" for uri in run_uris), "",
             "## Results", "", markdown_table(summaries)]
    if summaries:
        parts += ["## Where the time went", "", markdown_time_tables(summaries)]
    failed = [record for record in records if record.status == "failed"]
    if failed:
        parts += ["## Failed runs", "", *(f"- `{r.run_id}` ({r.method}, seed {r.seed}): {r.error}" for r in failed), ""]
    sweeps = _best_trials_table(records)
    if sweeps:
        parts += ["## Sweeps", "", sweeps]
    if regression_text is not None:
        parts += ["## Regressions against the previous run", "", "```", regression_text, "```", ""]
    for heading, text in extra_sections:
        parts += [f"## {heading}", "", text, ""]
    if images:
        parts += ["## Plots", ""] + [f"![{caption}]({os.path.basename(path)})\n" for caption, path in images.items()]
    return "\n".join(parts)


# ---- U-LiRA: the per-example picture (issue 30) -------------------------------------------------------------

def _group_words(group: tuple) -> str:
    return " · ".join(str(part) for part in group)


def _histogram_panels(exposures: list[exposure.MethodExposure]) -> list[dict]:
    return [{"title": f"{e.method} ({e.variant}; seed{'s' if len(e.seeds) > 1 else ''} {', '.join(map(str, e.seeds))})",
             "xlabel": exposure.score_label(e.variant), "forgotten": e.forgotten_scores,
             "never_seen": e.never_seen_scores, "untrusted": bool(e.untrusted_seeds)} for e in exposures]


def _histogram_caption(exposures: list[exposure.MethodExposure], group: tuple) -> str:
    text = (f"Per-sample U-LiRA scores, one panel per method: its forgotten samples (red) against as many "
            f"never-seen val samples (blue), pooled over seeds ({_group_words(group)}). Variant and score: "
            f"{exposure.variants_text(exposures)}. A model that forgot looks "
            "like never-seen data: the two histograms overlap.")
    untrusted = [e.method for e in exposures if e.untrusted_seeds]
    if untrusted:
        text += (f" Red panels ({', '.join(untrusted)}): a sanity anchor failed in some seed; those histograms "
                 "must not be trusted.")
    return text


def _ulira_histograms(exposures: list[exposure.MethodExposure], folder: str) -> dict[tuple, tuple[str, str]]:
    """{group: (caption, local PNG path)}: the per-method score histograms of each group that has audits."""
    written = {}
    for index, group in enumerate(sorted({e.group for e in exposures})):
        mine = [e for e in exposures if e.group == group]
        path = plots.score_histograms(_histogram_panels(mine), os.path.join(folder, f"ulira_scores_{index}.png"),
                                      title=f"U-LiRA per-sample scores ({_group_words(group)})")
        if path:
            written[group] = (_histogram_caption(mine, group), path)
    return written


def _ulira_markdown(exposures: list[exposure.MethodExposure], histograms: dict[tuple, tuple[str, str]],
                    notes: list[str]) -> str:
    """The per-example section of report.md (the membership table itself sits under Results)."""
    parts = []
    for group in sorted({e.group for e in exposures}):
        mine = [e for e in exposures if e.group == group]
        parts += [f"### {_group_words(group)}", "", *(f"- {exposure.exposure_sentence(e)}" for e in mine), "",
                  "| " + " | ".join(exposure.EXPOSURE_HEADERS) + " |",
                  "|---|---|---|---:|---|",
                  *("| " + " | ".join(exposure.exposure_cells(e)) + " |" for e in mine), "",
                  exposure.exposure_caption(mine), ""]
        if group in histograms:
            caption, path = histograms[group]
            parts += [f"![U-LiRA per-sample scores]({os.path.basename(path)})", "", caption, ""]
        parts += [f"**DO NOT TRUST** {e.method}, {warning}" for e in mine if e.untrusted_seeds for warning in e.warnings]
    if notes:
        parts += ["", "Audits not shown:", *(f"- {note}" for note in notes)]
    return "\n".join(parts)


DIFFUSION_GRID = "samples.png"  # written by the diffusion bench beside its records (jobs/diffusion.py)


def _diffusion_sections(records, run_uris: list[str], images: dict, pngs: dict, outputs: dict) -> list[tuple[str, str]]:
    """The diffusion family's poster table and closing figures, and its sample grid among the plots (its records
    never enter the classifier tables)."""
    if not records:
        return []
    for uri in run_uris:
        grid = storage.join(uri, DIFFUSION_GRID)
        if storage.exists(grid):
            caption = "Diffusion: samples per class (rows), before and after unlearning (blocks)"
            name = f"diffusion_samples_{len(images)}.png"
            pngs[caption] = storage.read_bytes(grid)
            images[caption] = name
            outputs[name] = pngs[caption]
    return [("Diffusion: class unlearning in a DDPM", diffusion_markdown(records)),
            ("Diffusion: closing figures", diffusion_summary(records))]


def write_report(run_uris: list[str] | tuple[str, ...], out_uri: str | None = None, *, title: str | None = None,
                 previous_uris: list[str] | tuple[str, ...] = (), bands: dict | None = None,
                 method_order: list[str] | None = None) -> dict[str, str]:
    """Write report.md, report.csv, *.png and report.html under out_uri (default: <first run>/report).

    With previous_uris, the per-method means are also checked against that run
    (regression.compare with `bands`, default regression.DEFAULT_BANDS), and the
    result goes into the report and regressions.txt. Returns {file name: URI}.
    """
    run_uris = list(run_uris)
    if not run_uris:
        raise DataError("no run URI given to report on")
    out_uri = out_uri or storage.join(run_uris[0], DEFAULT_OUT_DIR)
    records = load_records(*run_uris)
    diffusion = [record for record in records if is_diffusion(record)]
    records = [record for record in records if not is_diffusion(record)]  # classifier tables: classifier records
    summaries = summarize(records, method_order=method_order)
    if not summaries and not diffusion and not any(r.kind == "sweep-trial" for r in records):
        kinds = sorted({r.kind for r in records})
        raise DataError(f"nothing to report under {', '.join(run_uris)}: records are of kind {kinds}, "
                        "none unlearn/eval/bench or sweep-trial")
    regression_text = None
    if previous_uris:
        regression_text = compare_with_previous(records, previous_uris, bands).text
    title = title or f"Unlearning report: {', '.join(sorted({r.dataset for r in records}))}"
    generated = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    audits, audit_notes = exposure.load_audits(records)
    exposures = exposure.method_exposures(audits, method_order)
    with tempfile.TemporaryDirectory(prefix="unlearn-report-") as folder:
        images = {**_method_plots(summaries, folder), **_unfolding_plots(records, folder),
                  **_sweep_plots(records, folder)}
        pngs = {caption: Path(path).read_bytes() for caption, path in images.items()}
        outputs: dict[str, bytes] = {os.path.basename(path): pngs[caption] for caption, path in images.items()}
        histograms = _ulira_histograms(exposures, folder)
        histogram_pngs = {group: (caption, Path(path).read_bytes()) for group, (caption, path) in histograms.items()}
        outputs.update({os.path.basename(path): histogram_pngs[group][1] for group, (_, path) in histograms.items()})
    diffusion_sections = _diffusion_sections(diffusion, run_uris, images, pngs, outputs)
    ulira_sections = ([(ULIRA_HEADING, _ulira_markdown(exposures, histograms, audit_notes))]
                      if exposures or audit_notes else [])
    outputs["report.md"] = _markdown(title, run_uris, generated, summaries, records, regression_text,
                                     images, [*ulira_sections, *diffusion_sections]).encode("utf-8")
    outputs["report.csv"] = csv_text(summaries).encode("utf-8")
    sections = [("Sweeps", sweeps)] if (sweeps := _best_trials_table(records)) else []
    sections += diffusion_sections
    if regression_text is not None:
        sections.append(("Regressions against the previous run", regression_text))
    outputs["report.html"] = render_html(title, run_uris, summaries, pngs, sections=sections, generated=generated,
                                         ulira=html_ulira_section(summaries, exposures, histogram_pngs,
                                                                  audit_notes)).encode("utf-8")
    if regression_text is not None:
        outputs["regressions.txt"] = (regression_text + "\n").encode("utf-8")

    storage.ensure_bucket(out_uri)
    written = {}
    for name, data in outputs.items():
        uri = storage.join(out_uri, name)
        storage.write_bytes(uri, data)
        written[name] = uri
    return written
