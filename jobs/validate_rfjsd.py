"""`unlearn validate-rfjsd`: does the retrain-free RF-JSD track JSD against the retrained model?

Reads the records of a benchmark run (every method x seeds, with a gold model, so each record has both
JSD and RF-JSD) — or runs the benchmark of `--config` first — and prints the Pearson correlation
coefficient (PCC) of RF-JSD and JSD over all (method, seed) points and per seed (mean ± std), plus the
RF-JSD of the original and of the retrained model side by side. The paper reports PCC 0.92 ± 0.04.

It also prints, per seed, RF-JSD's floor: what a model that never saw D_f scores by sampling alone (the
original on draws from D_test with D_f's class counts, see pipeline/metrics/floor.py), and the methods
that score below it: their outputs on D_f are smoother than unseen data looks, which RF-JSD rewards and
JSD against the retrained model does not. Records written since the workers compute the floor carry it;
for older ones it is recomputed here from the run's data and original model, for data that fits in memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

import numpy as np

from jobs.common import run_main
from jobs.paths import absolute_args
from pipeline import storage
from pipeline.errors import ConfigError, DataError, UnlearnError
from pipeline.results.records import load_records
from pipeline.train.console import log



def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn validate-rfjsd", description=__doc__)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", nargs="+", help="benchmark run URI(s) whose records to use")
    source.add_argument("--config", help="run this benchmark config first (e.g. configs/digits.yaml)")
    p.add_argument("--out", help="with --config: the benchmark's run URI")
    p.add_argument("--floor-draws", type=int, default=200,
                   help="random draws from D_test per seed for RF-JSD's floor where the records carry none "
                        "(0: skip the floor)")
    return p


def points(records) -> list[dict]:
    """(method, seed, jsd, rf_jsd) for every record that has both."""
    rows = []
    for record in records:
        jsd, rf = record.metrics.get("jsd"), record.metrics.get("rf_jsd")
        if jsd is not None and rf is not None:
            rows.append({"method": record.method, "seed": record.seed, "jsd": jsd, "rf_jsd": rf})
    return rows


def pearson(x, y) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def correlation_summary(rows: list[dict]) -> dict:
    per_seed = defaultdict(list)
    for row in rows:
        per_seed[row["seed"]].append(row)
    seed_pcc = {seed: pearson([r["jsd"] for r in group], [r["rf_jsd"] for r in group])
                for seed, group in sorted(per_seed.items())}
    valid = [value for value in seed_pcc.values() if value is not None]
    return {"pcc_all": pearson([r["jsd"] for r in rows], [r["rf_jsd"] for r in rows]), "pcc_per_seed": seed_pcc,
            "pcc_mean": float(np.mean(valid)) if valid else None,
            "pcc_std": float(np.std(valid, ddof=1)) if len(valid) > 1 else None, "points": len(rows)}


def reference_rows(rows: list[dict]) -> dict:
    """Mean RF-JSD x1e4 of the original and the retrained model (the retrained one should score lower)."""
    out = {}
    for method in ("original", "retrain"):
        values = [r["rf_jsd"] * 1e4 for r in rows if r["method"] == method]
        out[method] = float(np.mean(values)) if values else None
    return out


def seed_floor(record, draws: int):
    """RF-JSD's floor for the (data, forget set, seed, original) of `record`, or None with the reason why."""
    import torch

    from pipeline.data.local import load_sources
    from pipeline.data.shards import read_meta
    from pipeline.metrics.floor import whole_split_floor
    from pipeline.models import load_checkpoint
    from pipeline.train.datasets import IN_MEMORY_LIMIT_BYTES

    data_uri, original_uri = record.config.get("data"), record.config.get("original")
    if not data_uri or not original_uri:
        return None, "its records name no data or original model"
    meta = read_meta(data_uri)
    # The floor decodes the whole dataset in this process: only data small enough for the in-memory data path.
    if sum(meta.counts.values()) * meta.channels * meta.height * meta.width > IN_MEMORY_LIMIT_BYTES:
        return None, f"{data_uri} is too large to decode in this process"
    sources, _ = load_sources(data_uri, spec=record.forget_spec, seed=record.seed, meta=meta, verify=False)
    original, _, _ = load_checkpoint(original_uri)
    floor = whole_split_floor(original, sources, torch.device("cpu"), draws=draws, seed=record.seed)
    return floor, None if floor else "no class of D_f has D_test and D_u samples"


def floors_per_seed(records, rows: list[dict], draws: int) -> dict:
    """{seed: {"mean_e4", "std_e4", "below": [(method, rf_jsd_e4)], ...}} or {"skipped": reason}."""
    out = {}
    for seed in sorted({row["seed"] for row in rows}):
        floor = recorded_floor(records, seed)
        if floor is None:
            floor, reason = recomputed_floor(records, seed, draws)
            if floor is None:
                return {"skipped": reason}
        below = sorted((r["method"], r["rf_jsd"] * 1e4) for r in rows
                       if r["seed"] == seed and r["rf_jsd"] < floor["mean"])
        out[seed] = {"mean_e4": floor["mean"] * 1e4, "std_e4": floor["std"] * 1e4, "below": below,
                     **{key: value for key, value in floor.items() if key not in ("mean", "std")}}
    return out


def recorded_floor(records, seed: int) -> dict | None:
    """The floor the benchmark's workers recorded for this seed (same original, data and draws for every row)."""
    for record in records:
        metrics = record.metrics
        if record.seed == seed and metrics.get("rf_jsd_floor") is not None:
            return {"mean": metrics["rf_jsd_floor"], "std": metrics["rf_jsd_floor_std"],
                    "draws": metrics.get("rf_jsd_floor_draws"), "from": "records"}
    return None


def recomputed_floor(records, seed: int, draws: int) -> tuple[dict | None, str | None]:
    """The floor recomputed in this process for records written before the workers recorded it."""
    record = next((r for r in records if r.seed == seed and r.metrics.get("rf_jsd") is not None
                   and r.config.get("data")), None)
    if record is None:
        return None, "the records name no data or original model"
    try:
        computed, reason = seed_floor(record, draws)
    except (UnlearnError, OSError) as error:  # moved data or model: the correlations still stand
        return None, f"seed {seed}: {error}"
    if computed is None:
        return None, reason
    return {"mean": computed.mean, "std": computed.std, "draws": computed.draws, "from": "recomputed",
            "with_replacement": computed.with_replacement}, None


def log_floors(floors: dict) -> None:
    if "skipped" in floors:
        log(f"RF-JSD floor: skipped ({floors['skipped']})")
        return
    per_seed = ", ".join(f"seed {seed} {f['mean_e4']:.1f} ± {f['std_e4']:.1f}" for seed, f in floors.items())
    log(f"RF-JSD x1e4 of a model that never saw D_f (the original on D_test draws with D_f's class counts): "
        f"{per_seed}")
    below = [f"{method} s{seed} {value:.1f}" for seed, f in floors.items() for method, value in f["below"]]
    if below:
        log("below that floor (smoother on D_f than unseen data looks, not better forgetting): " + ", ".join(below))


def main(argv: list[str] | None = None) -> int:
    args = absolute_args(parser().parse_args(argv), paths=("run", "config", "out"))
    if args.floor_draws < 0:  # before the benchmark --config runs, or the records are read
        raise ConfigError(f"--floor-draws must be 0 or more (0: skip the floor), not {args.floor_draws}")
    run_uris = args.run
    if args.config:
        from jobs import bench

        config = bench.load_config(args.config)
        run_uris = [args.out or bench.default_run_uri(config)]
        bench.run_bench(config, run_uris[0])
    records = load_records(*run_uris)
    rows = points(records)
    if not rows:
        raise DataError(f"no record in {run_uris} has both JSD and RF-JSD: run the benchmark with a gold model")
    summary = correlation_summary(rows)
    log(f"{'method':<11} {'seed':>5} {'JSD x1e4':>10} {'RF-JSD x1e4':>12}")
    for row in sorted(rows, key=lambda r: (r["method"], r["seed"])):
        log(f"{row['method']:<11} {row['seed']:>5} {row['jsd'] * 1e4:>10.1f} {row['rf_jsd'] * 1e4:>12.1f}")
    fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    log(f"PCC(RF-JSD, JSD) over {summary['points']} points: {fmt(summary['pcc_all'])}; per seed "
        f"{fmt(summary['pcc_mean'])} ± {fmt(summary['pcc_std'])} (paper: 0.92 ± 0.04)")
    unlearning_rows = [row for row in rows if row["method"] != "retrain"]
    summary["pcc_without_retrain"] = pearson([r["jsd"] for r in unlearning_rows], [r["rf_jsd"] for r in unlearning_rows])
    log(f"PCC without the retrained model's own rows (JSD 0 by definition): {fmt(summary['pcc_without_retrain'])}")
    references = reference_rows(rows)
    log(f"RF-JSD x1e4: original {fmt(references['original'])}, retrained {fmt(references['retrain'])}")
    floors = floors_per_seed(records, rows, args.floor_draws) if args.floor_draws > 0 else {
        "skipped": f"--floor-draws {args.floor_draws}"}
    log_floors(floors)
    storage.write_text(storage.join(run_uris[0], "rfjsd_validation.json"),
                       json.dumps({**summary, "references_e4": references, "floors": floors, "rows": rows},
                                  indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
