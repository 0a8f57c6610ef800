"""Paper-layout tables (rows = methods, as in the LoTUS paper) in Markdown, and the same numbers as CSV.

Cells read "0.912 ± 0.013"; a single seed shows the mean alone; a value that was
not measured (e.g. gold metrics without a retrained model) shows "—". In the
lower-is-better columns the best unlearning method is bold; original and
retrain are references and never compete for bold. A row whose Acc_r or Acc_test
mean is more than 0.05 below the original's is flagged ⚠ (its method name and the
cell that fell) and never bold: a model that lost what it should keep has not
forgotten well, however low its Acc_f. Methods with a known property that a
reader must not mistake for a bug (JiT) are noted under the table.
"""

from __future__ import annotations

import dataclasses

from pipeline.methods import METHOD_NOTES
from pipeline.results.aggregate import (INPUT_BOUND_SHARE, REFERENCE_METHODS, STD_DDOF, MethodSummary, groups_of,
                                        summary_frame)

MISSING = "—"
# A row is flagged when Acc_r or Acc_test falls more than this below the original's (same table, means over seeds).
KEEP_DROP = 0.05
FLAG = "⚠"
KEPT_COLUMNS = (("acc_retain", "Acc_r"), ("acc_test", "Acc_test"))


@dataclasses.dataclass(frozen=True)
class Column:
    header: str
    metric: str  # a key of MethodSummary.stats, or "time_ratio"
    decimals: int
    lower_is_better: bool = False


COLUMNS = (
    Column("Acc_f", "acc_forget", 3),
    Column("Acc_r", "acc_retain", 3),
    Column("Acc_test", "acc_test", 3),
    Column("MIA", "mia", 3),
    Column("Avg Gap ↓", "avg_gap", 3, lower_is_better=True),
    Column("JSD×1e4 ↓", "jsd_e4", 2, lower_is_better=True),
    Column("RF-JSD×1e4 ↓", "rf_jsd_e4", 2, lower_is_better=True),
    Column("Time (min)", "unlearn_minutes", 2),
    Column("Time / retrain", "time_ratio", 2),
)


def format_cell(mean: float | None, std: float | None, decimals: int) -> str:
    if mean is None:
        return MISSING
    if std is None:
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _mean_std(summary: MethodSummary, column: Column) -> tuple[float | None, float | None]:
    if column.metric == "time_ratio":
        return summary.time_ratio, None
    return summary.mean(column.metric), summary.std(column.metric)


def accuracy_losses(summaries: list[MethodSummary]) -> dict[str, dict[str, float]]:
    """{method: {metric: mean − original's mean}} for the rows of one table whose Acc_r or Acc_test mean falls
    more than KEEP_DROP below the original's; empty without an original row to compare with."""
    original = next((s for s in summaries if s.method == "original"), None)
    if original is None:
        return {}
    flagged = {}
    for summary in summaries:
        if summary is original:
            continue
        drops = {}
        for metric, _ in KEPT_COLUMNS:
            base, value = original.mean(metric), summary.mean(metric)
            if base is not None and value is not None and base - value > KEEP_DROP + 1e-9:
                drops[metric] = value - base
        if drops:
            flagged[summary.method] = drops
    return flagged


def _best_methods(summaries: list[MethodSummary], column: Column) -> set[str]:
    """Methods holding the lowest mean in a lower-is-better column, if at least two compete (flagged rows don't)."""
    if not column.lower_is_better:
        return set()
    flagged = accuracy_losses(summaries)
    means = {s.method: s.mean(column.metric) for s in summaries
             if s.method not in REFERENCE_METHODS and s.method not in flagged and s.mean(column.metric) is not None}
    if len(means) < 2:
        return set()
    # Compare at the printed precision so two cells that read the same are both bold.
    rounded = {method: round(mean, column.decimals) for method, mean in means.items()}
    best = min(rounded.values())
    return {method for method, value in rounded.items() if value == best}


@dataclasses.dataclass(frozen=True)
class Cell:
    text: str
    bold: bool = False


def table_cells(summaries: list[MethodSummary]) -> list[list[Cell]]:
    """Rows of cells (method name first) for the summaries of one group; shared by Markdown and HTML."""
    best = {column.metric: _best_methods(summaries, column) for column in COLUMNS}
    flagged = accuracy_losses(summaries)
    rows = []
    for summary in summaries:
        fell = flagged.get(summary.method, {})
        cells = [Cell(f"{summary.method} {FLAG}" if fell else summary.method)]
        for column in COLUMNS:
            text = format_cell(*_mean_std(summary, column), column.decimals)
            cells.append(Cell(f"{text} {FLAG}" if column.metric in fell else text,
                              bold=summary.method in best[column.metric]))
        rows.append(cells)
    return rows


def group_title(summary: MethodSummary) -> str:
    return f"{summary.dataset} · {summary.model} · forget {summary.forget_spec}"


def caption(summaries: list[MethodSummary]) -> str:
    seeds = ", ".join(f"{s.method} {len(s.seeds)}" for s in summaries)
    text = (f"Mean ± sample std (ddof={STD_DDOF}) over seeds (one seed: mean only); seeds per method: {seeds}. "
            "↓ lower is better; **bold** = best unlearning method (original and retrain are references); "
            f"{MISSING} = not measured.")
    floors = [s.mean("rf_jsd_floor_e4") for s in summaries if s.mean("rf_jsd_floor_e4") is not None]
    if floors:  # the same original and draws for every method of a group: one number per group
        text += (f" RF-JSD's sampling floor ×1e4: {floors[0]:.2f} (the original on draws from D_test with D_f's "
                 "class counts: what a model that never saw D_f scores by sampling alone; RF-JSD is read "
                 "against it, not against 0).")
    flagged = accuracy_losses(summaries)
    if flagged:
        headers = dict(KEPT_COLUMNS)
        rows = "; ".join(f"{method} (" + ", ".join(f"{headers[metric]} {drop:+.3f}" for metric, drop in drops.items())
                         + ")" for method, drops in flagged.items())
        text += (f" {FLAG} Acc_r or Acc_test more than {KEEP_DROP:.2f} below the original's: {rows}. These models "
                 "lost what they should keep; their low Acc_f is not good forgetting, and they never compete for "
                 "bold.")
    notes = [f"{s.method}: {METHOD_NOTES[s.method]}" for s in summaries if s.method in METHOD_NOTES]
    if notes:
        text += " Note: " + "; ".join(notes) + "."
    return text


def _markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def markdown_table(summaries: list[MethodSummary]) -> str:
    """One '### dataset · model · forget spec' section with a table per group."""
    if not summaries:
        return "_No unlearning records (kinds unlearn/eval/bench) to tabulate._\n"
    sections = []
    for group in groups_of(summaries):
        members = [s for s in summaries if s.group == group]
        lines = [f"### {group_title(members[0])}", "",
                 _markdown_row(["Method", *(column.header for column in COLUMNS)]),
                 "|" + "---|" + "---:|" * len(COLUMNS)]
        for cells in table_cells(members):
            lines.append(_markdown_row([f"**{c.text}**" if c.bold else c.text for c in cells]))
        lines += ["", caption(members), ""]
        if any(summary.mean("ulira_auc") is not None for summary in members):
            lines += ulira_markdown(members)
        sections.append("\n".join(lines))
    return "\n".join(sections)


# ---- U-LiRA beside the entropy MIA (issue 30) ----------------------------------------------------------------

ULIRA_COLUMNS = (("MIA (D_f)", "mia", 3), ("MIA (never seen)", "mia_unseen", 3), ("U-LiRA AUC", "ulira_auc", 3),
                 ("U-LiRA AUC (shadows)", "ulira_shadow_auc", 3),
                 ("TPR@1%FPR (shadows)", "ulira_shadow_tpr_1pct", 3))
UNTRUSTED = "†"


def ulira_table_cells(summaries: list[MethodSummary]) -> list[list[str]]:
    """Rows (method first) of the membership table: the entropy MIA's member rates next to U-LiRA's figures. A row
    is marked † when a seed's sanity anchors failed (its U-LiRA figures must not be trusted)."""
    rows = []
    for summary in summaries:
        trusted = summary.mean("ulira_trusted")
        mark = f" {UNTRUSTED}" if trusted is not None and trusted < 1 else ""
        rows.append([summary.method + mark, *(format_cell(summary.mean(metric), summary.std(metric), decimals)
                                              for _, metric, decimals in ULIRA_COLUMNS)])
    return rows


def ulira_caption(summaries: list[MethodSummary]) -> str:
    text = ("Membership: the entropy MIA's share of D_f (and of never-seen val) called member, beside U-LiRA, the "
            "per-example likelihood-ratio attack with shadow models (`unlearn audit-mia`). U-LiRA AUC: this seed's "
            "unlearned model, its D_f against as many never-seen val samples (0.5 = looks never seen; two-sided "
            "online: below or above both mean distinguishable). Shadows: each shadow in turn audited by the others "
            "(what the method leaves behind), which resolves TPR at 1 % FPR that one model's D_f cannot. "
            f"Means ± std over seeds; {MISSING} = not audited (reference rows, or the offline variant for the shadow "
            "columns).")
    untrusted = [s.method for s in summaries if s.mean("ulira_trusted") is not None and s.mean("ulira_trusted") < 1]
    if untrusted:
        text += (f" {UNTRUSTED} a sanity anchor failed in some seed ({', '.join(untrusted)}): the original model was "
                 "not attackable or a model retrained without D_f was; those U-LiRA figures must not be trusted.")
    return text


def ulira_markdown(summaries: list[MethodSummary]) -> list[str]:
    return ["#### Membership: entropy MIA and U-LiRA", "",
            _markdown_row(["Method", *(header for header, _, _ in ULIRA_COLUMNS)]),
            "|---|" + "---:|" * len(ULIRA_COLUMNS),
            *(_markdown_row(cells) for cells in ulira_table_cells(summaries)), "", ulira_caption(summaries), ""]


# ---- where the time went -----------------------------------------------------------------------------------

SHARE_COLUMNS = (("startup", "Start-up"), ("data", "Data"), ("unlearn", "Unlearning"),
                 ("epoch_reports", "Checkpoints"), ("eval", "Evaluation"))
RATE_COLUMNS = (("data", "Data img/s"), ("unlearn", "Unlearning img/s"), ("eval", "Evaluation img/s"))
TIME_HEADERS = ("Method", *(f"{label} %" for _, label in SHARE_COLUMNS), *(label for _, label in RATE_COLUMNS),
                "Unlearning waiting on input %")


def format_share(share: float | None) -> str:
    return MISSING if share is None else f"{100 * share:.1f}"


def format_rate(rate: float | None) -> str:
    """Images per second: whole numbers from 100 up (with thousands separators), three figures below."""
    if rate is None:
        return MISSING
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"


def time_table_cells(summaries: list[MethodSummary]) -> list[list[str]]:
    """Rows (method name first) of the where-the-time-went table of one group; shared by Markdown and HTML."""
    return [[summary.method, *(format_share(summary.phase_shares.get(phase)) for phase, _ in SHARE_COLUMNS),
             *(format_rate(summary.throughput.get(phase)) for phase, _ in RATE_COLUMNS),
             format_share(summary.wait_shares.get("unlearn"))] for summary in summaries]


def verdict(summary: MethodSummary) -> str:
    """One line: whether data or compute bound the method's unlearning, and the figures behind the call."""
    unlearn_seconds = summary.phases.get("unlearn") or summary.mean("unlearn_seconds")
    if not unlearn_seconds:
        return f"{summary.method}: no unlearning to judge (it changes no weight)"
    if summary.bound is None:
        return (f"{summary.method}: no verdict: its records carry no images or input-wait seconds for the "
                "unlearning (an older record, or a row whose unlearning was timed in another job, such as retrain)")
    rate = summary.throughput.get("unlearn")
    return (f"{summary.method}: {summary.bound}: {format_share(summary.wait_shares['unlearn'])} % of its "
            f"{unlearn_seconds:.1f} s of unlearning waited for the next batch; {format_rate(rate)} images/s")


def time_caption() -> str:
    return ("Share of each phase in the method's run time (%; the sum of its phases: in a bench the start-up and "
            "data phases are shared by the methods of one Ray Train fit and counted in full for each), images "
            "per second of each phase (images that went through it, summed over workers, over its seconds), and "
            "the share of the unlearning that the workers spent waiting for their next batch: above "
            f"{100 * INPUT_BOUND_SHARE:.0f} % the method is input-bound (the data path sets its pace), else "
            f"compute-bound. Means over seeds; {MISSING} = not measured (records written before these figures, "
            "or a phase that moved no image).")


def markdown_time_tables(summaries: list[MethodSummary]) -> str:
    """'### dataset · model · forget spec' sections: the table, its caption and one verdict line per method."""
    if not summaries:
        return "_No unlearning records to break down._\n"
    sections = []
    for group in groups_of(summaries):
        members = [s for s in summaries if s.group == group]
        lines = [f"### {group_title(members[0])}", "", _markdown_row(list(TIME_HEADERS)),
                 "|---|" + "---:|" * (len(TIME_HEADERS) - 1)]
        lines += [_markdown_row(cells) for cells in time_table_cells(members)]
        lines += ["", time_caption(), "", *(f"- {verdict(s)}" for s in members), ""]
        sections.append("\n".join(lines))
    return "\n".join(sections)


def csv_text(summaries: list[MethodSummary]) -> str:
    """The table's numbers unrounded, mean and std as separate columns (see aggregate.summary_frame)."""
    return summary_frame(summaries).to_csv(index=False)


# ---- diffusion family (issue 22): the poster table of class unlearning in a DDPM -----------------------------
# Rows: methods (original and retrain as references); columns: what the SAFEMax poster reports. Values are means
# over seeds of the records' flat metrics (pipeline/metrics/diffusion.py flat_metrics).
DIFFUSION_COLUMNS = (("Forget-class acc ↓", "gen_acc_forget", 3), ("Retain acc", "gen_acc_retain", 3),
                     ("FID proxy ↓", "fid_proxy", 1), ("Minutes", "unlearn_minutes", 2),
                     ("Peak memory (MB)", "peak_memory_mb", 0))
RELEARN_STEPS = ("0", "10", "50", "100")


def is_diffusion(record) -> bool:
    return (record.config or {}).get("family") == "diffusion"


def diffusion_means(records) -> dict[str, dict[str, float | None]]:
    """{method: {metric: mean over its seeds}} for the diffusion records, in first-seen order."""
    by_method: dict[str, list] = {}
    for record in records:
        if is_diffusion(record) and record.status == "ok":
            by_method.setdefault(record.method, []).append(record)
    out = {}
    for method, runs in by_method.items():
        keys = {key for run in runs for key, value in run.metrics.items() if isinstance(value, (int, float))
                and not isinstance(value, bool)}
        out[method] = {key: _mean([run.metrics.get(key) for run in runs]) for key in keys}
        out[method]["seeds"] = len(runs)
    return out


def _mean(values) -> float | None:
    values = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(values) / len(values) if values else None


def _cell(value, decimals: int) -> str:
    return MISSING if value is None else f"{value:.{decimals}f}"


def diffusion_markdown(records) -> str:
    means = diffusion_means(records)
    if not means:
        return ""
    header = ["Method", *(name for name, _, _ in DIFFUSION_COLUMNS),
              *(f"Relearn@{steps}" for steps in RELEARN_STEPS)]
    lines = [_markdown_row(header), _markdown_row(["---"] * len(header))]
    for method, values in means.items():
        lines.append(_markdown_row([method, *(_cell(values.get(key), decimals) for _, key, decimals in DIFFUSION_COLUMNS),
                                    *(_cell(values.get(f"relearn_acc_{steps}"), 2) for steps in RELEARN_STEPS)]))
    chance = _mean([1 / len([k for k in values if k.startswith("gen_acc_class_")]) for values in means.values()
                    if any(k.startswith("gen_acc_class_") for k in values)])
    note = (f"\nForget-class / retain acc: the metrics classifier's accuracy on samples generated for the forgotten / "
            f"the other classes (chance {_cell(chance, 2)}). FID proxy: Fréchet distance of that classifier's features, "
            "generated vs real retained-class images. Relearn@N: forget-class acc after N fine-tuning steps on 8 real "
            "images of the class. Minutes: training (original, retrain) or unlearning time. Peak memory: CUDA max "
            "allocated on a GPU, the process's peak RSS on CPU.\n")
    return "\n".join(lines) + "\n" + note


def diffusion_csv(records) -> str:
    means = diffusion_means(records)
    keys = sorted({key for values in means.values() for key in values})
    rows = [",".join(["method", *keys])]
    rows += [",".join([method, *("" if values.get(k) is None else f"{values[k]:.6g}" for k in keys)])
             for method, values in means.items()]
    return "\n".join(rows) + "\n"


def diffusion_summary(records) -> str:
    """The closing figures: SAFEMax / retrain time, the early-steps switch, anchor-free vs anchored, relearning."""
    means = diffusion_means(records)
    lines = []
    safemax = next((m for m in means if m == "safemax"), None)
    retrain = means.get("retrain")
    if safemax and retrain and retrain.get("unlearn_minutes") and means[safemax].get("unlearn_minutes") is not None:
        lines.append(f"SAFEMax time / retrain time: {means[safemax]['unlearn_minutes'] / retrain['unlearn_minutes']:.3f} "
                     f"({means[safemax]['unlearn_minutes'] * 60:.1f} s vs {retrain['unlearn_minutes'] * 60:.1f} s)")
    for method, values in means.items():
        if method.startswith("safemax") and method != "safemax" and safemax:
            lines.append(f"Early-steps switch: {safemax} vs {method}: retain acc {_cell(means[safemax].get('gen_acc_retain'), 3)}"
                         f" vs {_cell(values.get('gen_acc_retain'), 3)}, FID proxy {_cell(means[safemax].get('fid_proxy'), 1)}"
                         f" vs {_cell(values.get('fid_proxy'), 1)}, forget-class acc "
                         f"{_cell(means[safemax].get('gen_acc_forget'), 3)} vs {_cell(values.get('gen_acc_forget'), 3)}")
    for method, values in means.items():
        lines.append(f"{method}: forget-class samples pixel std {_cell(values.get('forget_pixel_std'), 3)}, neighbour "
                     f"correlation {_cell(values.get('forget_neighbour_correlation'), 3)} (retained classes: "
                     f"{_cell(values.get('retain_pixel_std'), 3)}, {_cell(values.get('retain_neighbour_correlation'), 3)})")
    return "\n".join(lines) + "\n"
