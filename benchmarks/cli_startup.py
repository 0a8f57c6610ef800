"""Seconds until `unlearn COMMAND --help` and a flag error come back, per subcommand (issue 34).

Each case runs in a fresh interpreter, as a user's shell runs it, so the figure includes Python's start-up and
every import the command makes before it answers. A flag error here is one that needs no file: an unknown
flag, or a value that is wrong on its face (`--workers 0`). The median of --repeat runs is printed.

    .venv/bin/python benchmarks/cli_startup.py [--repeat 3] [--only run,forget] [--json OUT]

The goal is under 1 s for every line on a laptop-class CPU; before the parse-first change `run --help` took
about 9 s on 2 busy cores (torch and Ray were imported before argparse ran).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# One flag error per subcommand that needs no file: the required flags are given (any values), then one bad one.
FLAG_ERRORS = {
    "prepare": ["--source", "digits", "--out", "x", "--procs", "0"],
    "train": ["--data", "d", "--out", "o", "--workers", "0"],
    "run": ["--data", "d", "--original", "m", "--method", "lotus", "--out", "o", "--workers", "0"],
    "forget": ["--data", "d", "--model", "m", "--ids", "i", "--out", "o", "--workers", "0"],
    "audit": ["c", "--no-such-flag"],
    "eval": ["--data", "d", "--model", "m", "--out", "o", "--workers", "0"],
    "audit-mia": ["--data", "d", "--model", "m", "--method", "nosuch", "--bank", "b", "--out", "o"],
    "methods": ["--no-such-flag"],
    "validate-rfjsd": ["--run", "r", "--floor-draws", "-1"],
    "sweep": ["--data", "d", "--original", "m", "--methods", "lotus", "--out", "o", "--trials", "0"],
    "report": ["r", "--no-such-flag"],
    "bench": ["--config", "c", "--seeds", "x"],
    "bench-ingest": ["--data", "d", "--passes", "0"],
    "demo": ["--workers", "0"],
    "ids": ["--data", "d", "--split", "nosuch"],
    "convert-weights": ["--weights", "w", "--model", "cnn", "--out", "o", "--num-classes", "0", "--image-size", "32",
                        "--mean", "0.5", "--std", "0.25"],
}


def seconds(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and exit code of `python -m jobs.cli ARGV` in a fresh interpreter."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "jobs.cli", *argv], capture_output=True, text=True)
    return time.perf_counter() - started, done.returncode


def median_seconds(argv: list[str], repeat: int) -> tuple[float, int]:
    runs = [seconds(argv) for _ in range(repeat)]
    return statistics.median(s for s, _ in runs), runs[-1][1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3, help="runs per case; the median is printed")
    p.add_argument("--only", help="comma-separated subcommands (default: every one the CLI lists)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    from jobs.cli import COMMANDS, _available

    names = args.only.split(",") if args.only else [name for name in COMMANDS if _available(name)]
    rows = []
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.1f} at the start (the figures grow with it)")
    print(f"{'command':<16} {'--help s':>9} {'rc':>3} {'flag error s':>13} {'rc':>3}")
    for name in names:
        help_s, help_rc = median_seconds([name, "--help"], args.repeat)
        error_s, error_rc = median_seconds([name, *FLAG_ERRORS[name]], args.repeat) if name in FLAG_ERRORS \
            else (float("nan"), -1)
        rows.append({"command": name, "help_s": round(help_s, 3), "help_rc": help_rc,
                     "flag_error_s": round(error_s, 3), "flag_error_rc": error_rc})
        print(f"{name:<16} {help_s:>9.2f} {help_rc:>3} {error_s:>13.2f} {error_rc:>3}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"python": sys.version.split()[0], "cpus": os.cpu_count(), "load_average": load,
                       "repeat": args.repeat, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
