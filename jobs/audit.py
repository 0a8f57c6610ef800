"""`unlearn audit CHAIN_URI`: verify a model's audit chain of deletion requests and print its history.

Checks that every record is intact (schema, its own digest), that each links to the sha256 of the one before,
that every model and forgotten-id file still has the sha256 its record names, and that each request started
from the model the chain had produced. Exits 0 when the chain holds, 1 naming each break otherwise.
"""

from __future__ import annotations

import argparse
import sys

from jobs.common import add_endpoint_flag, apply_endpoint, run_main
from pipeline.deletion.chain import verify_chain
from pipeline.errors import DataError
from pipeline.train.console import log


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn audit", description=__doc__)
    p.add_argument("chain", metavar="CHAIN_URI", help="the --out of `unlearn forget` (local or s3://)")
    add_endpoint_flag(p)
    return p


def history_lines(entries) -> list[str]:
    lines = [f"{'#':>3}  {'recorded (UTC)':<25} {'request':<28} {'ids':>7}  {'verdict':<9} output model sha256"]
    for entry in entries:
        try:
            r = entry.record()
        except DataError:
            lines.append(f"{'?':>3}  {entry.name}: unreadable")
            continue
        output = (r.get("output_model") or {}).get("sha256") or "—"
        lines.append(f"{r.get('sequence', '?'):>3}  {str(r.get('created')):<25} {str(r.get('request_id')):<28} "
                     f"{(r.get('request') or {}).get('ids_count', '?'):>7}  {str(r.get('verdict')):<9} {output[:16]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    apply_endpoint(args)
    entries, problems = verify_chain(args.chain)
    if not entries:
        raise DataError(f"no audit chain under {args.chain} (expected {args.chain}/chain/000001.json ...)")
    for line in history_lines(entries):
        log(line)
    if problems:
        for problem in problems:
            print(f"BROKEN {problem}", file=sys.stderr)
        print(f"audit chain {args.chain}: {len(problems)} break(s) found", file=sys.stderr)
        return 1
    log(f"audit chain {args.chain}: {len(entries)} record(s), every link and file verified; "
        f"head record sha256 {entries[-1].sha256} (keep it elsewhere to anchor the chain)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
