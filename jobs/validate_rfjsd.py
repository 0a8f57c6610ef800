"""`unlearn validate-rfjsd`: does the retrain-free RF-JSD track JSD against the retrained model?

Reads the records of a benchmark run (every method x seeds, with a gold model, so each record has both
JSD and RF-JSD) — or runs the benchmark of `--config` first — and prints the Pearson correlation
coefficient (PCC) of RF-JSD and JSD over all (method, seed) points and per seed (mean ± std), plus the
RF-JSD of the original and of the retrained model side by side. The paper reports PCC 0.92 ± 0.04.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

import numpy as np

from jobs.common import log, run_main
from pipeline import storage
from pipeline.errors import DataError
from pipeline.results.records import load_records


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn validate-rfjsd", description=__doc__)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", nargs="+", help="benchmark run URI(s) whose records to use")
    source.add_argument("--config", help="run this benchmark config first (e.g. configs/digits.yaml)")
    p.add_argument("--out", help="with --config: the benchmark's run URI")
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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    run_uris = args.run
    if args.config:
        from jobs import bench

        config = bench.load_config(args.config)
        run_uris = [args.out or bench.default_run_uri(config)]
        bench.run_bench(config, run_uris[0])
    rows = points(load_records(*run_uris))
    if not rows:
        raise DataError(f"no record in {run_uris} has both JSD and RF-JSD: run the benchmark with a gold model")
    summary = correlation_summary(rows)
    log(f"{'method':<11} {'seed':>5} {'JSD x1e4':>10} {'RF-JSD x1e4':>12}")
    for row in sorted(rows, key=lambda r: (r["method"], r["seed"])):
        log(f"{row['method']:<11} {row['seed']:>5} {row['jsd'] * 1e4:>10.1f} {row['rf_jsd'] * 1e4:>12.1f}")
    fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    log(f"PCC(RF-JSD, JSD) over {summary['points']} points: {fmt(summary['pcc_all'])}; per seed "
        f"{fmt(summary['pcc_mean'])} ± {fmt(summary['pcc_std'])} (paper: 0.92 ± 0.04)")
    references = reference_rows(rows)
    log(f"RF-JSD x1e4: original {fmt(references['original'])}, retrained {fmt(references['retrain'])}")
    storage.write_text(storage.join(run_uris[0], "rfjsd_validation.json"),
                       json.dumps({**summary, "references_e4": references, "rows": rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
