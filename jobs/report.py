"""`unlearn report RUN_URI [RUN_URI...]`: aggregate result records into report.md, report.csv, PNG plots and a
self-contained report.html; print the table and where the HTML went.

With `--compare PREVIOUS_URI...` the per-method means are also checked against a previous run (tolerance
bands from `--bands FILE`, else the defaults in pipeline.results.regression); anything that regressed is
printed with how far it moved, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import sys

from jobs.common import add_endpoint_flag, apply_endpoint, run_main
from jobs.paths import absolute_args
from pipeline.config import load_yaml
from pipeline.errors import ConfigError
from pipeline.train.console import log

# pipeline.results (pandas, matplotlib) is imported inside the functions below, after the flags are parsed:
# `unlearn report --help` and a flag error answer at once.

EXIT_REGRESSED = 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_URI", help="run URIs whose records are pooled (local or s3://)")
    p.add_argument("--out", help="where the report files go (default: <first RUN_URI>/report)")
    p.add_argument("--compare", nargs="+", default=[], metavar="PREVIOUS_URI",
                   help="previous run(s) to check for regressions; exit 1 when anything regressed")
    p.add_argument("--bands", help="YAML of tolerance bands ({metric: {max_drop: 0.02}}), or a bench config "
                                   "with a `bands:` section (default: the built-in bands)")
    p.add_argument("--title", help="report title (default: the datasets reported on)")
    add_endpoint_flag(p)
    return p


def read_bands(uri: str | None) -> dict:
    """Bands from a YAML file: either the mapping itself or a bench config's `bands:` section."""
    from pipeline.results.regression import DEFAULT_BANDS, validate_bands

    if uri is None:
        return DEFAULT_BANDS
    body = load_yaml(uri)
    bands = body["bands"] if "bands" in body else body
    if not isinstance(bands, dict) or not bands:
        raise ConfigError(f"{uri} holds no tolerance bands (a mapping such as acc_test: {{max_drop: 0.02}})")
    validate_bands(bands)
    return bands


def regression_check(run_uris: list[str], previous_uris: list[str], bands: dict) -> bool:
    """Print what moved beyond its band and by how much; True when anything regressed. Previous runs without
    records (the first night, a skipped one) are said to be so, not an error."""
    from pipeline.results.records import load_records
    from pipeline.results.regression import compare_with_previous

    comparison = compare_with_previous(load_records(*run_uris), previous_uris, bands)
    log(f"== regression check against {', '.join(previous_uris)} ==")
    log(comparison.text)
    return comparison.regressed


def warn_without_records(previous_uris: list[str]) -> None:
    """Said before any compute: a --compare run without records is compared with nothing (a typo shows here)."""
    from pipeline.results.records import has_records
    from pipeline.results.regression import nothing_to_compare

    missing = [uri for uri in previous_uris if not has_records(uri)]
    if missing:
        log(f"--compare: {nothing_to_compare(missing)} The report will say so.")


def publish(run_uris: list[str], out: str | None = None, previous_uris: list[str] | None = None,
            bands: dict | None = None, title: str | None = None, method_order: list[str] | None = None) -> dict:
    """Write the report, print its table and the path of report.html; return {file name: URI}."""
    from pipeline.results.aggregate import summarize
    from pipeline.results.records import load_records
    from pipeline.results.report import write_report
    from pipeline.results.tables import diffusion_markdown, is_diffusion, markdown_table

    written = write_report(run_uris, out, title=title, previous_uris=previous_uris or (), bands=bands,
                           method_order=method_order)
    records = load_records(*run_uris)
    classifier = [record for record in records if not is_diffusion(record)]
    if classifier:
        log(markdown_table(summarize(classifier, method_order=method_order)))
    if len(classifier) < len(records):
        log(diffusion_markdown([record for record in records if is_diffusion(record)]))
    log(f"report: {written['report.html']} (also report.md, report.csv and the plots beside it)")
    return written


def main(argv: list[str] | None = None) -> int:
    args = absolute_args(parser().parse_args(argv), paths=("runs", "out", "compare", "bands"))
    apply_endpoint(args)
    bands = read_bands(args.bands)
    warn_without_records(args.compare)
    publish(args.runs, args.out, args.compare, bands, args.title)
    if args.compare and regression_check(args.runs, args.compare, bands):
        return EXIT_REGRESSED
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
