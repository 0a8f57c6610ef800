"""Do two benchmark runs give the same results? For a change that must not change behaviour (a refactor).

    python -m benchmarks.same_results RUN_BEFORE RUN_AFTER

Compares, per (method, seed) record: every metric except timings, exactly; the per-epoch history to a relative
1e-6 (a mean loss may be summed in another order: LoTUS's F.cross_entropy has the same gradients to the bit as
the loss it replaced, but its value can differ in the last bit); and the unlearned models' weights to the bit; then the report's results table without its time columns. Prints the table and
exits 1 when anything differs. (`unlearn bench --compare` judges a night against tolerance bands instead.)
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from pipeline.models import load_checkpoint
from pipeline.results.records import ResultRecord, load_records
from pipeline.storage import join, read_text

TIMING_WORDS = ("seconds", "images_per_s", "wait")


def records_by_row(run_uri: str) -> dict[tuple[str, int], ResultRecord]:
    return {(record.method, record.seed): record for record in load_records(run_uri)}


def untimed(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if not any(word in key for word in TIMING_WORDS)}


def close(first, second) -> bool:
    if isinstance(first, float) and isinstance(second, float):
        return math.isclose(first, second, rel_tol=1e-6)
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(close(first[key], second[key]) for key in first)
    if isinstance(first, list) and isinstance(second, list):
        return len(first) == len(second) and all(close(a, b) for a, b in zip(first, second))
    return first == second


def same_weights(first_uri: str, second_uri: str) -> bool:
    first, second = load_checkpoint(first_uri)[0].state_dict(), load_checkpoint(second_uri)[0].state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def results_table(run_uri: str) -> list[str]:
    """The report's first table (the results), without its time columns."""
    lines = read_text(join(run_uri, "report", "report.md")).splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line.split("|"))
    keep = [index for index, cell in enumerate(rows[0]) if "Time" not in cell]
    return ["|".join(cells[index] for index in keep) for cells in rows]


def differences(before: str, after: str) -> list[str]:
    first, second = records_by_row(before), records_by_row(after)
    found = [f"rows only in one run: {sorted(first.keys() ^ second.keys())}"] if first.keys() != second.keys() else []
    models = 0
    for row in sorted(first.keys() & second.keys()):
        a, b = first[row], second[row]
        if untimed(a.metrics) != untimed(b.metrics):
            found.append(f"{row}: metrics differ")
        if not close(a.config.get("history"), b.config.get("history")):
            found.append(f"{row}: per-epoch history differs")
        if a.checkpoint_uri and b.checkpoint_uri and a.checkpoint_uri != b.checkpoint_uri:
            models += 1
            if not same_weights(a.checkpoint_uri, b.checkpoint_uri):
                found.append(f"{row}: weights differ")
    print(f"{len(first)} records and {models} unlearned models compared")
    if results_table(before) != results_table(after):
        found.append("the results tables differ")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", help="run URI of the first benchmark run")
    p.add_argument("after", help="run URI of the second")
    args = p.parse_args(argv)
    found = differences(args.before, args.after)
    print("\n".join(results_table(args.after)))
    for line in found:
        print(f"DIFFERS: {line}")
    print("identical results" if not found else f"{len(found)} difference(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
