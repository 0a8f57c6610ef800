"""Runs as plain functions of a typed specification (spec.py): train, evaluate, unlearn. A resumable run
carries its identity (identity.py), so that a rerun goes on only with the same run.

The command line (jobs/), the benchmark, the sweep's trials (tuning/) and deletion requests build a spec
and call these; nothing here reads a command line.
"""
