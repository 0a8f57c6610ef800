"""Runs as plain functions of a typed specification (spec.py): train, evaluate, unlearn.

The command line (jobs/), the benchmark, the sweep's trials (tuning/) and deletion requests build a spec
and call these; nothing here reads a command line.
"""
