"""PNG plots for reports: time vs RF-JSD / Avg Gap, per-phase runtimes, and Tune sweeps (grid searches as
heatmaps, random searches as scatters).

Figures are built on matplotlib's object API with the Agg canvas, never through
pyplot: no global backend switch, no display needed, and safe to call from
several threads in a job driver. Each function writes one PNG to a local path
and returns it, or returns None when there is nothing to plot (so a report
never shows an empty chart).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.errors import DataError
from pipeline.results.aggregate import MethodSummary, groups_of
from pipeline.results.tables import group_title

PHASES = (("startup", "start-up"), ("data", "data"), ("unlearn", "unlearning"), ("epoch_reports", "epoch checkpoints"),
          ("eval", "evaluation"))
METRIC_LABELS = {"rf_jsd_e4": "RF-JSD ×1e4 (lower is better)", "avg_gap": "Avg Gap (lower is better)",
                 "jsd_e4": "JSD ×1e4 (lower is better)"}
# A time axis spanning more than this factor goes logarithmic, so seconds-long
# methods and an hours-long retrain are both readable.
LOG_SPAN = 20.0
DPI = 110
REDUCERS = {"min": np.min, "max": np.max, "mean": np.mean}


def _save(figure: Figure, path: str) -> str:
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png", dpi=DPI)
    return path


def _figure(panels: int, width: float = 6.0, height: float = 4.5) -> tuple[Figure, list]:
    figure = Figure(figsize=(width * panels, height), layout="constrained")
    return figure, [figure.add_subplot(1, panels, index + 1) for index in range(panels)]


def _wants_log(values: list[float], span: float = LOG_SPAN) -> bool:
    return bool(values) and min(values) > 0 and max(values) / min(values) >= span


def time_vs_metric(summaries: list[MethodSummary], metric: str, path: str) -> str | None:
    """One point per method: mean unlearning minutes vs mean `metric`, error bars = std over seeds."""
    panels = []
    for group in groups_of(summaries):
        points = [s for s in summaries if s.group == group
                  and s.mean("unlearn_minutes") is not None and s.mean(metric) is not None]
        if points:
            panels.append(points)
    if not panels:
        return None
    figure, axes_list = _figure(len(panels))
    for axes, points in zip(axes_list, panels):
        for summary in points:
            x, y = summary.mean("unlearn_minutes"), summary.mean(metric)
            axes.errorbar(x, y, xerr=summary.std("unlearn_minutes") or 0, yerr=summary.std(metric) or 0,
                          fmt="o", capsize=3)
            axes.annotate(summary.method, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=9)
        if _wants_log([s.mean("unlearn_minutes") for s in points]):
            axes.set_xscale("log")
        axes.set_xlabel("unlearning time (min)")
        axes.set_ylabel(METRIC_LABELS.get(metric, metric))
        axes.set_title(group_title(points[0]), fontsize=10)
        axes.grid(True, alpha=0.3)
    return _save(figure, path)


def time_vs_rf_jsd(summaries: list[MethodSummary], path: str) -> str | None:
    return time_vs_metric(summaries, "rf_jsd_e4", path)


def time_vs_avg_gap(summaries: list[MethodSummary], path: str) -> str | None:
    return time_vs_metric(summaries, "avg_gap", path)


def _phase_seconds(summary: MethodSummary, phase: str) -> float:
    seconds = summary.phases.get(phase)
    if seconds is None and phase == "unlearn":
        seconds = summary.mean("unlearn_seconds")  # records that only set unlearn_seconds
    return seconds or 0.0


def phase_bars(summaries: list[MethodSummary], path: str) -> str | None:
    """Stacked bars per method: mean seconds of start-up, data, unlearning, epoch checkpoints and evaluation."""
    groups = [[s for s in summaries if s.group == group] for group in groups_of(summaries)]
    groups = [members for members in groups
              if any(_phase_seconds(s, phase) for s in members for phase, _ in PHASES)]
    if not groups:
        return None
    figure, axes_list = _figure(len(groups), width=max(6.0, 0.7 * max(len(g) for g in groups) + 2))
    for axes, members in zip(axes_list, groups):
        positions = np.arange(len(members))
        bottom = np.zeros(len(members))
        for phase, label in PHASES:
            heights = np.array([_phase_seconds(s, phase) for s in members])
            if heights.any():
                axes.bar(positions, heights, bottom=bottom, label=label)
                bottom += heights
        axes.set_xticks(positions, [s.method for s in members], rotation=30, ha="right")
        axes.set_ylabel("seconds (mean over seeds)")
        axes.set_title(group_title(members[0]), fontsize=10)
        axes.legend(fontsize=8)
    return _save(figure, path)


def _format_number(value: float) -> str:
    return f"{value:.3g}"


def _axis_cells(values: pd.Series, max_cells: int) -> tuple[np.ndarray, list[str], str]:
    """Map each value to a cell index: one cell per distinct value when there are few, else bins.

    Bins are log-spaced when all values are positive and span more than a decade
    (learning rates, alphas), linear otherwise. Returns (indices, labels, note).
    """
    distinct = np.unique(values.to_numpy(dtype=float))
    if len(distinct) <= max_cells:
        return np.searchsorted(distinct, values.to_numpy(dtype=float)), [_format_number(v) for v in distinct], ""
    low, high = distinct[0], distinct[-1]
    log = low > 0 and high / low > 10
    edges = np.geomspace(low, high, max_cells + 1) if log else np.linspace(low, high, max_cells + 1)
    indices = np.clip(np.searchsorted(edges, values.to_numpy(dtype=float), side="right") - 1, 0, max_cells - 1)
    labels = [f"{_format_number(a)}–{_format_number(b)}" for a, b in zip(edges[:-1], edges[1:])]
    return indices, labels, " (log bins)" if log else " (bins)"


def _feasible_mask(frame: pd.DataFrame, infeasible_column: str | None) -> np.ndarray:
    if not infeasible_column or infeasible_column not in frame.columns:
        return np.ones(len(frame), dtype=bool)  # no feasibility recorded: every trial counts
    return frame[infeasible_column].fillna(True).astype(bool).to_numpy()


def heatmap(frame: pd.DataFrame, path: str, *, x: str = "alpha", y: str = "lr", value: str = "rf_jsd",
            infeasible_column: str | None = "feasible", reduce: str = "min", max_cells: int = 12,
            title: str | None = None) -> str:
    """Tune sweep: cell colour = `reduce` (min: the best trial) of `value` over the feasible trials in the cell.

    `infeasible_column` names a boolean column that is True for feasible trials;
    cells holding infeasible trials get a red ×, cells with no feasible trial are grey.
    """
    missing = [column for column in (x, y, value) if column not in frame.columns]
    if missing:
        raise DataError(f"heatmap needs columns {missing}; the frame has {list(frame.columns)}")
    if reduce not in REDUCERS:
        raise DataError(f"heatmap reduce must be one of {sorted(REDUCERS)}, not {reduce!r}")
    trials = frame.dropna(subset=[x, y])
    if trials.empty:
        raise DataError(f"no trials with both {x} and {y} set to plot")
    columns, x_labels, x_note = _axis_cells(trials[x], max_cells)
    rows, y_labels, y_note = _axis_cells(trials[y], max_cells)
    feasible = _feasible_mask(trials, infeasible_column)
    values = trials[value].to_numpy(dtype=float)

    grid = _reduce_cells((len(y_labels), len(x_labels)), rows, columns, feasible, values, reduce)
    infeasible_cells = sorted({(row, column) for row, column, ok in zip(rows, columns, feasible) if not ok})

    figure, (axes,) = _figure(1, width=max(6.0, 0.8 * len(x_labels) + 2), height=max(4.5, 0.5 * len(y_labels) + 2))
    colormap = _colormap()
    image = axes.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto", cmap=colormap)
    figure.colorbar(image, ax=axes, label=f"{reduce} {value} over feasible trials")
    for (row, column), cell_value in np.ndenumerate(grid):
        if not math.isnan(cell_value):
            axes.text(column, row, _format_number(cell_value), ha="center", va="center", fontsize=8,
                      bbox={"facecolor": "white", "alpha": 0.6, "linewidth": 0, "pad": 1})
    if infeasible_cells:
        marks = np.array(infeasible_cells)
        axes.scatter(marks[:, 1], marks[:, 0], marker="x", s=140, color="red", linewidths=2, zorder=3,
                     label="infeasible trial(s)")
        axes.legend(loc="upper left", bbox_to_anchor=(0, -0.15), fontsize=8)
    axes.set_xticks(range(len(x_labels)), x_labels, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(len(y_labels)), y_labels, fontsize=8)
    axes.set_xlabel(x + x_note)
    axes.set_ylabel(y + y_note)
    axes.set_title(title or f"{value} over {x} × {y} ({len(trials)} trials)", fontsize=10)
    return _save(figure, path)


def is_grid(frame: pd.DataFrame, x: str, y: str) -> bool:
    """Whether the trials' (x, y) values fill the cross product of their distinct values (a grid search), rather
    than scattering over it (random search: n trials take about n distinct values on each axis)."""
    pairs = frame[[x, y]].dropna().drop_duplicates()
    return len(pairs) == pairs[x].nunique() * pairs[y].nunique()


def sweep_plot(frame: pd.DataFrame, path: str, *, x: str, y: str, value: str, infeasible_column: str | None = "feasible",
               title: str | None = None) -> str:
    """A grid search as a heatmap of its cells; sampled values as a scatter (on a categorical grid most
    cells of a random search would be empty)."""
    if is_grid(frame, x, y):
        return heatmap(frame, path, x=x, y=y, value=value, infeasible_column=infeasible_column, title=title)
    return sweep_scatter(frame, path, x=x, y=y, value=value, infeasible_column=infeasible_column, title=title)


def sweep_scatter(frame: pd.DataFrame, path: str, *, x: str, y: str, value: str,
                  infeasible_column: str | None = "feasible", title: str | None = None) -> str:
    """One point per trial at its sampled (x, y), log axes where the values span decades: colour = `value` for
    feasible trials (the best is ringed), a red × for infeasible ones, a grey + for trials with no value."""
    trials = frame.dropna(subset=[x, y])
    if trials.empty:
        raise DataError(f"no trials with both {x} and {y} set to plot")
    feasible = _feasible_mask(trials, infeasible_column)
    values = trials[value].to_numpy(dtype=float)
    xs, ys = trials[x].to_numpy(dtype=float), trials[y].to_numpy(dtype=float)
    measured = feasible & ~np.isnan(values)
    figure, (axes,) = _figure(1, width=7.0, height=5.0)
    if measured.any():
        points = axes.scatter(xs[measured], ys[measured], c=values[measured], cmap=_colormap(), s=70,
                              edgecolors="black", linewidths=0.5, zorder=3, label="feasible trial")
        figure.colorbar(points, ax=axes, label=f"{value} (lower is better)")
        best = np.flatnonzero(measured)[np.argmin(values[measured])]
        axes.scatter([xs[best]], [ys[best]], s=260, facecolors="none", edgecolors="black", linewidths=1.5,
                     zorder=4, label=f"best: {_format_number(values[best])}")
    if (~feasible).any():
        axes.scatter(xs[~feasible], ys[~feasible], marker="x", s=90, color="red", linewidths=2, zorder=3,
                     label="infeasible trial")
    unmeasured = feasible & np.isnan(values)
    if unmeasured.any():
        axes.scatter(xs[unmeasured], ys[unmeasured], marker="+", s=90, color="grey", zorder=3,
                     label="no value (failed)")
    for axis, values_on_axis in (("x", xs), ("y", ys)):
        if _wants_log(list(values_on_axis), span=10.0):
            getattr(axes, f"set_{axis}scale")("log")
    axes.set_xlabel(x)
    axes.set_ylabel(y)
    axes.legend(loc="upper left", bbox_to_anchor=(0, -0.12), fontsize=8, ncol=2)
    axes.grid(True, which="both", alpha=0.25)
    axes.set_title(title or f"{value} over {x} × {y} ({len(trials)} trials)", fontsize=10)
    return _save(figure, path)


def _reduce_cells(shape, rows, columns, feasible, values, reduce: str) -> np.ndarray:
    """Grid of reduce(values of the feasible, finished trials) per cell; NaN where there are none."""
    cells: dict[tuple[int, int], list[float]] = {}
    for row, column, ok, cell_value in zip(rows, columns, feasible, values):
        if ok and not math.isnan(cell_value):
            cells.setdefault((row, column), []).append(cell_value)
    grid = np.full(shape, np.nan)
    for (row, column), cell_values in cells.items():
        grid[row, column] = REDUCERS[reduce](cell_values)
    return grid


def _colormap():
    from matplotlib import colormaps

    # viridis: the best (lowest) RF-JSD is the darkest cell; cells without a feasible trial are light grey.
    return colormaps["viridis"].with_extremes(bad="lightgrey")


CURVE_PANELS = (("loss", "training loss"), ("acc_f", "Acc_f during unlearning"), ("tau", "LoTUS temperature τ"))


def epoch_curves(histories: dict[str, list[list[dict]]], path: str, title: str = "") -> str | None:
    """How unlearning unfolded: per-epoch values from the methods' histories, one line per run (a colour per
    method), one panel per value that some method recorded: loss; Acc_f where measured (LoTUS's acc_f, with
    its acc_u target dashed); LoTUS's τ."""
    panels = [(key, label) for key, label in CURVE_PANELS
              if any(key in entry for runs in histories.values() for run in runs for entry in run)]
    if not panels:
        return None
    figure, axes_list = _figure(len(panels), width=5.0, height=4.0)
    colours = _method_colours(histories)
    for axes, (key, label) in zip(axes_list, panels):
        for method, runs in histories.items():
            for index, run in enumerate(runs):
                points = [(entry["epoch"] + 1, entry[key]) for entry in run if entry.get(key) is not None]
                if points:
                    axes.plot(*zip(*points), marker="o", markersize=3, color=colours[method],
                              label=method if index == 0 else None)
                target = [entry["acc_u"] for entry in run if entry.get("acc_u") is not None]
                if key == "acc_f" and target and index == 0:
                    axes.axhline(target[0], color=colours[method], linestyle="--", linewidth=1,
                                 label=f"{method}: acc_u (target)")
        axes.set_xlabel("epoch")
        axes.set_title(label, fontsize=10)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def _method_colours(methods) -> dict[str, tuple]:
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {method: palette(index % palette.N) for index, method in enumerate(methods)}


def forgetting_by_class(rows: dict[str, dict[int, float]], path: str, title: str = "") -> str | None:
    """Acc_f per class of D_f (columns) for each model (rows: the original first, the retrained model last):
    which classes a method forgot, and how far from the retrained model's level. Values are written in the
    cells when there are few classes."""
    rows = {label: values for label, values in rows.items() if values}
    if not rows:
        return None
    classes = sorted({c for values in rows.values() for c in values})
    grid = np.array([[values.get(c, np.nan) for c in classes] for values in rows.values()])
    figure, (axes,) = _figure(1, width=min(16.0, max(6.0, 0.55 * len(classes) + 3)), height=0.4 * len(rows) + 2.5)
    image = axes.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=_colormap(), vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="Acc_f (mean over seeds)")
    if len(classes) <= 30:
        axes.set_xticks(range(len(classes)), [str(c) for c in classes], fontsize=8)
        for (row, column), value in np.ndenumerate(grid):
            if not math.isnan(value):
                axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                          bbox={"facecolor": "white", "alpha": 0.6, "linewidth": 0, "pad": 1})
    axes.set_yticks(range(len(rows)), list(rows), fontsize=8)
    axes.set_xlabel(f"class ({len(classes)} in D_f)")
    axes.set_title(title or "Acc_f per class", fontsize=10)
    return _save(figure, path)



# ---- U-LiRA: per-sample attack scores (issue 30) -------------------------------------------------------------

HISTOGRAM_BINS = 30
HISTOGRAM_COLUMNS = 4
# Scores spanning more than this go on an asinh axis (linear near 0, logarithmic in the tails): an online ratio can
# reach -250 for a never-seen sample (measured: SSD on digits-hard) while forgotten ones sit within ±30, and on a
# linear axis the whole forgotten histogram then fits in one bin.
ASINH_SPAN = 60.0


def score_histograms(panels: list[dict], path: str, title: str = "") -> str | None:
    """One panel per method: histograms of the per-sample attack scores of its forgotten samples against its
    never-seen ones (pooled over seeds, shared bins, each bar a share of its role's samples so unequal counts
    compare). Each panel dict has
    "title", "xlabel", "forgotten" and "never_seen" (score arrays) and "untrusted" (a sanity anchor failed: the
    panel is framed and titled in red, so it cannot be read without the warning)."""
    panels = [panel for panel in panels if len(panel["forgotten"]) and len(panel["never_seen"])]
    if not panels:
        return None
    columns = min(HISTOGRAM_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.3 * rows + 0.4), layout="constrained")
    for index, panel in enumerate(panels):
        axes = figure.add_subplot(rows, columns, index + 1)
        _score_panel(axes, panel)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def _score_panel(axes, panel: dict) -> None:
    forgotten = np.asarray(panel["forgotten"], dtype=float)
    never_seen = np.asarray(panel["never_seen"], dtype=float)
    bins, asinh = _score_bins(np.concatenate([forgotten, never_seen]))
    if asinh:
        axes.set_xscale("asinh")
    # Each bar is a share of its role's samples, not a density: on an asinh axis the bins differ in width.
    axes.hist(never_seen, bins=bins, weights=np.full(len(never_seen), 1 / len(never_seen)), alpha=0.55,
              color="tab:blue", label=f"never seen ({len(never_seen)})")
    axes.hist(forgotten, bins=bins, weights=np.full(len(forgotten), 1 / len(forgotten)), alpha=0.55,
              color="tab:red", label=f"forgotten ({len(forgotten)})")
    axes.set_xlabel(panel["xlabel"] + (" (asinh axis)" if asinh else ""), fontsize=8)
    axes.set_ylabel("share of samples", fontsize=8)
    axes.tick_params(labelsize=7)
    axes.legend(fontsize=7)
    axes.grid(True, alpha=0.3)
    if panel.get("untrusted"):
        axes.set_title(panel["title"] + "\nUNTRUSTED: a sanity anchor failed", fontsize=9, color="red")
        for spine in axes.spines.values():
            spine.set_edgecolor("red")
            spine.set_linewidth(2)
    else:
        axes.set_title(panel["title"], fontsize=9)


def _score_bins(scores: np.ndarray) -> tuple[np.ndarray, bool]:
    """Shared bin edges, equal-width on the axis they are drawn on: linear, or asinh for a span over ASINH_SPAN."""
    low, high = float(scores.min()), float(scores.max())
    if high <= low:
        return np.linspace(low - 0.5, low + 0.5, HISTOGRAM_BINS + 1), False
    if high - low <= ASINH_SPAN:
        return np.linspace(low, high, HISTOGRAM_BINS + 1), False
    return np.sinh(np.linspace(np.arcsinh(low), np.arcsinh(high), HISTOGRAM_BINS + 1)), True
