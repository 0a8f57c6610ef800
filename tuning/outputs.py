"""What a finished sweep leaves under its run URI: the trial table, the best configs, the sweep plots.

    trials.parquet, trials.csv   every trial of every method (settings, RF-JSD, accuracies, feasible, ...)
    best_configs.yaml            method → settings of its best feasible trial (what `bench` loads)
    heatmap_<method>.png         RF-JSD over two searched settings (α × lr for LoTUS), infeasible trials marked:
                                 a heatmap for a grid search, a scatter on log axes for random search
"""

from __future__ import annotations

import io
import os
import tempfile

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline import storage
from pipeline.results.plots import sweep_plot
from tuning.objective import best_trial
from tuning.spaces import constants, tuned_keys
from tuning.trial import plain

TABLE_NAME, BEST_CONFIGS_NAME = "trials", "best_configs.yaml"
PREFERRED_AXES = ("alpha", "lr")  # DESIGN §1: LoTUS is tuned over α × learning rate


def write_table(frame: pd.DataFrame, run_uri: str) -> list[str]:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    parquet_uri, csv_uri = (storage.join(run_uri, f"{TABLE_NAME}.{ext}") for ext in ("parquet", "csv"))
    storage.write_bytes(parquet_uri, buffer.getvalue())
    storage.write_text(csv_uri, frame.to_csv(index=False))
    return [parquet_uri, csv_uri]


def best_settings(frame: pd.DataFrame, space: dict) -> dict | None:
    """The best trial's settings (searched values and the space's constants), or None without a feasible trial.

    `frame` holds one method's trials, so its setting columns keep their types (an int stays an int).
    """
    best = best_trial(frame)
    if best is None:
        return None
    return {**constants(space), **{key: plain(best[key]) for key in tuned_keys(space)}}


def write_best_configs(best: dict[str, dict], run_uri: str) -> str:
    uri = storage.join(run_uri, BEST_CONFIGS_NAME)
    header = "# Best feasible settings per method (lowest RF-JSD); see trials.csv for every trial.\n"
    storage.write_text(uri, header + yaml.safe_dump(best, sort_keys=False))
    return uri


def heatmap_axes(frame: pd.DataFrame, space: dict) -> tuple[str, str] | None:
    """α × lr when the method has both, else its first two searched numeric settings."""
    numeric = [key for key in dict.fromkeys([*PREFERRED_AXES, *tuned_keys(space)])
               if key in frame and pd.to_numeric(frame[key], errors="coerce").notna().all()]
    if all(key in numeric for key in PREFERRED_AXES):
        return PREFERRED_AXES
    searched = [key for key in numeric if key in tuned_keys(space)]
    return (searched[0], searched[1]) if len(searched) >= 2 else None


def write_heatmap(frame: pd.DataFrame, method: str, space: dict, run_uri: str) -> str | None:
    """The method's RF-JSD heatmap, or None when it has no two numeric settings or no metrics to show."""
    axes = heatmap_axes(frame, space)
    plotted = frame.dropna(subset=["rf_jsd"])
    if axes is None or plotted.empty:
        return None
    plotted = plotted.assign(**{axis: pd.to_numeric(plotted[axis]) for axis in axes})
    uri = storage.join(run_uri, f"heatmap_{method}.png")
    with tempfile.TemporaryDirectory() as folder:
        path = sweep_plot(plotted, os.path.join(folder, "heatmap.png"), x=axes[0], y=axes[1], value="rf_jsd",
                          infeasible_column="feasible",
                          title=f"{method}: RF-JSD of the feasible trials ({len(plotted)} trials; × = infeasible)")
        with open(path, "rb") as handle:
            storage.write_bytes(uri, handle.read())
    return uri
