"""The `unlearn` command: thin; each subcommand is a job in `jobs/` (also runnable as `python -m jobs.NAME`)."""

from __future__ import annotations

import importlib
import importlib.util
import sys

COMMANDS = {
    "prepare": ("jobs.prepare", "convert digits / digits-hard / synthetic / synthetic-imagenet / an ImageFolder into shards"),
    "train": ("jobs.train", "train the original (or, with --retain-only, the gold) model through Ray Train"),
    "run": ("jobs.unlearn", "unlearn a forget set with LoTUS or a baseline through Ray Train, then evaluate"),
    "forget": ("jobs.forget", "honour a deletion request: unlearn named samples, gate the result, record it"),
    "ids": ("jobs.ids", "list the sample ids (by split, class, name pattern) to put in a deletion request"),
    "convert-weights": ("jobs.convert_weights", "turn a raw state dict (torchvision, timm) into the checkpoint run and forget take"),
    "audit": ("jobs.audit", "verify a model's audit chain of deletion requests and print its history"),
    "eval": ("jobs.evaluate", "evaluate a model: accuracies, MIA, JSD, RF-JSD, Avg Gap"),
    "audit-mia": ("jobs.audit_mia", "audit an unlearned model with U-LiRA (per-example attack, shadow models on Ray)"),
    "methods": ("jobs.methods", "list the unlearning methods with their default settings"),
    "validate-rfjsd": ("jobs.validate_rfjsd", "correlate RF-JSD with JSD over methods and seeds"),
    "sweep": ("jobs.sweep", "Ray Tune search of method hyperparameters against RF-JSD"),
    "report": ("jobs.report", "aggregate result records into tables, plots and an HTML report"),
    "bench": ("jobs.bench", "run the benchmark of a config (every method x seeds), then the report"),
    "bench-ingest": ("jobs.bench_ingest", "images/s into training batches: Ray Data vs a plain DataLoader"),
    "demo": ("jobs.demo", "the end-to-end demo on digits-hard"),
}


def usage() -> str:
    lines = ["usage: unlearn COMMAND [options]   (unlearn COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<15} {text}" for name, (_, text) in COMMANDS.items() if _available(name)]
    return "\n".join(lines)


def _available(name: str) -> bool:
    return importlib.util.find_spec(COMMANDS[name][0]) is not None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS or not _available(name):
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    from jobs.common import run_main

    job = importlib.import_module(COMMANDS[name][0])
    return run_main(job.main, rest)


if __name__ == "__main__":
    sys.exit(main())
