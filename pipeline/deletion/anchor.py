"""The chain's anchor: a place outside the chain, chosen by the operator, where each request appends the chain's
new head. A chain alone cannot show that its last records were removed, or that a record was edited and the
chain re-sealed after it (every digest and link recomputed): both leave a chain that checks out. The anchor
can, because whoever rewrites the chain cannot rewrite it:

- a local path: an append-only file, one JSON line per head, written with O_APPEND (make it append-only for
  everyone but root with `chattr +a FILE`);
- an s3:// prefix: one object per head, `NNNNNN-<record sha256>.json`; in a bucket with S3 Object Lock
  (compliance mode) nobody can delete or overwrite them. A name per head means no two heads share an
  object, so two requests that both claim one sequence number both stay visible.

An entry names the chain (its URI), the record's sequence number, its sha256 and the request id; no id or key.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from pipeline import storage
from pipeline.errors import ConfigError, DataError


@dataclass(frozen=True)
class AnchorEntry:
    chain: str
    sequence: int
    record_sha256: str
    request_id: str
    anchored: str

    def line(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode("utf-8")


def new_entry(chain_uri: str, sequence: int, record_sha256: str, request_id: str) -> AnchorEntry:
    from pipeline.results.records import utc_now_iso  # here: records loads pandas, which `unlearn audit --help` needs not

    return AnchorEntry(chain_uri, sequence, record_sha256, request_id, utc_now_iso())


def _parse(text: str, where: str) -> AnchorEntry:
    try:
        body = json.loads(text)
        return AnchorEntry(**{name: body[name] for name in AnchorEntry.__dataclass_fields__})
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"anchor {where} is not an anchor entry ({exc})") from None


def read_anchor(anchor_uri: str) -> list[AnchorEntry]:
    """Every entry of the anchor, in the order appended (a file) or of sequence number (an S3 prefix)."""
    if storage.is_s3(anchor_uri):
        storage.ensure_bucket(anchor_uri)
        return [_parse(storage.read_text(uri), uri) for uri in storage.list_files(anchor_uri, ".json")]
    if not os.path.exists(anchor_uri):
        return []
    if os.path.isdir(anchor_uri):
        raise ConfigError(f"anchor {anchor_uri} is a folder: a local anchor is a file (an s3:// anchor is a prefix)")
    lines = storage.read_text(anchor_uri).splitlines()
    return [_parse(line, f"{anchor_uri} line {number}") for number, line in enumerate(lines, 1) if line.strip()]


def append_anchor(anchor_uri: str, entry: AnchorEntry) -> None:
    """Add `entry`, then read the anchor back: the head must be there as written."""
    if storage.is_s3(anchor_uri):
        name = storage.join(anchor_uri, f"{entry.sequence:06d}-{entry.record_sha256}.json")
        if not storage.create_once(name, entry.line()) and _parse(storage.read_text(name), name).record_sha256 \
                != entry.record_sha256:
            raise DataError(f"anchor object {name} holds another head than the one written")
    else:
        _append_line(anchor_uri, entry.line())
    if not any(found.chain == entry.chain and found.sequence == entry.sequence
               and found.record_sha256 == entry.record_sha256 for found in read_anchor(anchor_uri)):
        raise DataError(f"anchor {anchor_uri}: the head of record {entry.sequence} is not there after writing it")


def _append_line(path: str, line: bytes) -> None:
    """One write() with O_APPEND: concurrent appenders never interleave a short line, and nothing is rewritten."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

    def append() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    storage.retrying("append to", path, append)


def anchor_problems(chain_uri: str, record_sha256s: list[str], entries: list[AnchorEntry],
                    anchor_uri: str) -> list[str]:
    """Where the chain (its records' sha256s in sequence order) departs from what the anchor holds for it: a record
    removed, replaced or re-sealed since it was anchored, two heads for one sequence number, records added after
    the last anchored head. Empty: every anchored head is in the chain, and the chain ends at the last of them."""
    mine = [entry for entry in entries if entry.chain == chain_uri]
    if not mine:
        return [f"the anchor {anchor_uri} holds no head of the chain {chain_uri}" +
                (f" (it holds heads of {', '.join(sorted({e.chain for e in entries}))})" if entries else "")]
    problems, by_sequence = [], {}
    for entry in mine:
        by_sequence.setdefault(entry.sequence, set()).add(entry.record_sha256)
    for sequence, heads in sorted(by_sequence.items()):
        where = f"record {sequence:06d}"
        if len(heads) > 1:
            problems.append(f"{where}: the anchor holds {len(heads)} different heads for it "
                            f"({', '.join(sorted(heads))}): two requests claimed this number at once on a store that "
                            "did not stop the second")
        if sequence > len(record_sha256s):
            problems.append(f"{where}: anchored with sha256 {sorted(heads)[0]}, but the chain ends at record "
                            f"{len(record_sha256s)}: the record(s) after it were removed")
        elif record_sha256s[sequence - 1] not in heads:
            problems.append(f"{where}: the chain's record has sha256 {record_sha256s[sequence - 1]}, the anchor holds "
                            f"{', '.join(sorted(heads))}: it was replaced or edited since (even if re-sealed)")
    last = max(by_sequence)
    if len(record_sha256s) > last:
        problems.append(f"record(s) {last + 1:06d}-{len(record_sha256s):06d} are not in the anchor: added after the "
                        f"last anchored head. If the last one is a request of yours that stopped before anchoring, "
                        f"check it and anchor it with `unlearn audit {chain_uri} --anchor {anchor_uri} "
                        f"--anchor-head {record_sha256s[-1]}`")
    return problems


def head_problems(record_sha256s: list[str], expected: str) -> list[str]:
    """Whether the chain ends at the record whose sha256 the operator kept (`unlearn audit --expect-head`)."""
    expected = expected.strip().lower()
    if record_sha256s and record_sha256s[-1] == expected:
        return []
    have = (f"the chain has {len(record_sha256s)} record(s), its head has sha256 {record_sha256s[-1]}"
            if record_sha256s else "the chain has no record")
    if expected in record_sha256s:
        at = record_sha256s.index(expected) + 1
        return [f"expected head {expected} is record {at:06d}, but {have}: {len(record_sha256s) - at} record(s) were "
                "added after it"]
    return [f"no record of the chain has the expected head sha256 {expected}; {have}: records were removed, or a "
            "record was replaced or edited and the chain re-sealed"]
