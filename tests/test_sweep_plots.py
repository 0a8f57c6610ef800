"""A sweep's picture fits its search: a grid search as a heatmap of its cells, random search as a scatter of the
sampled values on log axes (colour = RF-JSD, × = infeasible)."""

import numpy as np
import pandas as pd

from pipeline.results import plots
from tests.test_results import assert_png, sweep_frame


def random_frame(trials=12, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"alpha": np.exp(rng.uniform(0, np.log(32), trials)),
                          "lr": np.exp(rng.uniform(np.log(1e-5), np.log(1e-3), trials)),
                          "rf_jsd": rng.uniform(0.01, 0.1, trials), "feasible": True})
    frame.loc[0, "feasible"] = False
    frame.loc[1, "rf_jsd"] = np.nan  # a failed trial
    return frame


def test_a_grid_fills_its_cross_product_and_random_samples_do_not():
    assert plots.is_grid(sweep_frame(4, 3), "alpha", "lr")
    assert plots.is_grid(sweep_frame(1, 4), "alpha", "lr")  # one alpha, four learning rates
    assert not plots.is_grid(random_frame(), "alpha", "lr")


def test_random_search_is_drawn_as_a_scatter_and_a_grid_as_a_heatmap(tmp_path, monkeypatch):
    drawn = []
    for name in ("heatmap", "sweep_scatter"):
        original = getattr(plots, name)
        monkeypatch.setattr(plots, name, lambda *a, _name=name, _f=original, **k: drawn.append(_name) or _f(*a, **k))
    assert_png(plots.sweep_plot(random_frame(), str(tmp_path / "random.png"), x="alpha", y="lr", value="rf_jsd"))
    assert_png(plots.sweep_plot(sweep_frame(), str(tmp_path / "grid.png"), x="alpha", y="lr", value="rf_jsd"))
    assert drawn == ["sweep_scatter", "heatmap"]


def test_the_scatter_marks_infeasible_and_failed_trials_and_uses_log_axes(tmp_path, monkeypatch):
    drawn = {}
    original_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda figure, path: drawn.setdefault("axes", figure.axes[0]) and
                        original_save(figure, path))
    assert_png(plots.sweep_scatter(random_frame(), str(tmp_path / "s.png"), x="alpha", y="lr", value="rf_jsd"))
    axes = drawn["axes"]
    assert axes.get_xscale() == "log" and axes.get_yscale() == "log"
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert "infeasible trial" in labels and "no value (failed)" in labels and labels[1].startswith("best: ")
