"""`unlearn audit CHAIN_URI`: verify a model's audit chain of deletion requests and print its history.

Checks that every record is intact (schema, its own digest), that each links to the sha256 of the one before,
that every model and forgotten-id file still has the sha256 its record names, that each request started from
the model the chain had produced, and that the samples each accepted request removed are still gone from its
dataset. A chain cannot show by itself that its last records were removed, or that it was edited and re-sealed:
--expect-head (the head sha256 you kept) and --anchor (where each request appended its head) can. Exits 0 when
everything holds, 1 naming each break otherwise; requests recorded as not verifiable are listed as still open
(they are no break). Needs no id key.
"""

from __future__ import annotations

import argparse
import sys

from jobs.common import add_endpoint_flag, apply_endpoint, run_main
from jobs.paths import absolute
from pipeline.deletion.anchor import head_problems
from pipeline.deletion.chain import (ACCEPTED, adopt_head, anchored_problems, dataset_problems, removals_of,
                                     verify_chain)
from pipeline.deletion.gate import NOT_VERIFIABLE
from pipeline.errors import ConfigError, DataError
from pipeline.train.console import log


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn audit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("chain", metavar="CHAIN_URI", help="the --out of `unlearn forget` (local or s3://)")
    p.add_argument("--expect-head", metavar="SHA256",
                   help="the sha256 of the chain's last record as you kept it: fails if the chain ends elsewhere "
                        "(records removed, or re-sealed after an edit)")
    p.add_argument("--anchor", metavar="URI", help="the --anchor of `unlearn forget`: every head it holds must be "
                                                   "in the chain, and the chain must end at the last of them")
    p.add_argument("--anchor-head", metavar="SHA256",
                   help="with --anchor: add the chain's head to the anchor by hand, for a request that was recorded "
                        "but could not reach the anchor (its error message names the sha256)")
    p.add_argument("--no-data-check", action="store_true",
                   help="skip checking that removed samples are still gone from the dataset (for an auditor without "
                        "access to the data)")
    add_endpoint_flag(p)
    return p


def history_lines(entries) -> list[str]:
    lines = [f"{'#':>3}  {'recorded (UTC)':<25} {'request':<28} {'ids':>7}  {'verdict':<14} {'key':<8} "
             "output model sha256"]
    for entry in entries:
        try:
            r = entry.record()
        except DataError:
            lines.append(f"{'?':>3}  {entry.name}: unreadable")
            continue
        output = (r.get("output_model") or {}).get("sha256") or "—"
        key = str((r.get("id_key") or {}).get("version") or "—")[:8]
        lines.append(f"{r.get('sequence', '?'):>3}  {str(r.get('created')):<25} {str(r.get('request_id')):<28} "
                     f"{(r.get('request') or {}).get('ids_count', '?'):>7}  {str(r.get('verdict')):<14} {key:<8} "
                     f"{output[:16]}")
    return lines


def open_requests(records: list[dict]) -> str | None:
    """A line on the not-verifiable requests: recorded, but nothing was forgotten or removed for them, unless a later
    accepted request named the same ids (equal HMAC of the list under the same key: partial overlaps need the key)."""
    def same_ids(record: dict) -> tuple:
        return (record.get("request") or {}).get("ids_hmac"), (record.get("id_key") or {}).get("version")

    settled, unsettled = [], []
    for position, record in enumerate(records):
        if record.get("verdict") != NOT_VERIFIABLE:
            continue
        later = next((r for r in records[position + 1:] if r.get("verdict") == ACCEPTED
                      and same_ids(r) == same_ids(record)), None)
        if later:
            settled.append(f"{record.get('request_id')} (by {later.get('request_id')})")
        else:
            unsettled.append(str(record.get("request_id")))
    if not settled and not unsettled:
        return None
    line = f"{len(settled) + len(unsettled)} request(s) not verifiable"
    if settled:
        line += f"; settled later by an accepted request for the same ids: {', '.join(settled)}"
    if unsettled:
        line += (f"; still open: {', '.join(unsettled)}. Their models were not released and their samples are still in "
                 "the data: ask again with `unlearn forget --bank` (a U-LiRA shadow bank judges every sample) or as "
                 "part of a larger request")
    return line


def readable_records(entries) -> list[dict]:
    """The records that parse (the others are reported by verify_chain)."""
    records = []
    for entry in entries:
        try:
            records.append(entry.record())
        except DataError:
            pass
    return records


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    apply_endpoint(args)
    chain, anchor = absolute(args.chain), absolute(args.anchor)
    if args.anchor_head and not anchor:
        raise ConfigError("--anchor-head needs --anchor: the anchor to add the head to")
    entries, problems = verify_chain(chain)
    if not entries:
        raise DataError(f"no audit chain under {chain} (expected {chain}/chain/000001.json ...)")
    for line in history_lines(entries):
        log(line)
    if args.anchor_head and not problems:
        adopt_head(chain, entries, anchor, args.anchor_head)
        log(f"anchored record {len(entries):06d} (sha256 {entries[-1].sha256}) in {anchor}")
    if args.expect_head:
        problems += head_problems([entry.sha256 for entry in entries], args.expect_head)
    if anchor:
        problems += anchored_problems(chain, entries, anchor)
    records = readable_records(entries)
    removals = removals_of(records)
    if not args.no_data_check:
        problems += dataset_problems(chain, removals)
    if problems:
        for problem in problems:
            print(f"BROKEN {problem}", file=sys.stderr)
        print(f"audit chain {chain}: {len(problems)} break(s) found", file=sys.stderr)
        return 1
    checked = [what for what, done in (("the expected head", args.expect_head), (f"the anchor {anchor}", anchor))
               if done]
    log(f"audit chain {chain}: {len(entries)} record(s), every link and file verified"
        + (f", and it ends at {' and '.join(checked)}" if checked else "")
        + ("" if args.no_data_check or not removals else
           f"; the samples its {len(removals)} accepted request(s) removed are still gone from the data")
        + f"; head record sha256 {entries[-1].sha256}")
    unverified = open_requests(records)
    if unverified:
        log(unverified)
    if not checked:
        log("note: without --expect-head or --anchor, removing the last records or re-sealing the chain after an "
            "edit cannot be detected; keep the head sha256 above elsewhere, or anchor the chain")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
