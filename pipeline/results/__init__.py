"""The result stage: records written by every run, aggregated into tables, plots, an HTML report
and a nightly regression check. Submodules are imported directly (plots pull in matplotlib)."""
