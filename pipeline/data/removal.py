"""Removing forgotten samples from a dataset for good: a new version of the dataset without them.

An accepted deletion request must not leave its samples where the next `unlearn train`, bench, sweep or
nightly reads them again. Every job finds a dataset's rows through its `_meta.json` (the shard list), so the
removal is a new dataset version at the same URI:

1. `plan_removal`: each shard holding a forgotten row is rewritten without it, one row group at a time, into a
   new file `part-00003.<REQUEST>.parquet` (create-once; untouched shards stay as they are); the new
   `_meta.json` (shard list, counts, and `extra.removed` naming the chain and request, never an id) and the
   current one are kept under `_versions/<sha256>.json`. Readers still see the old version.
2. The caller records the new version in the deletion chain (the sha256s of both `_meta.json`s).
3. `install`: the new `_meta.json` replaces the old one (an atomic write), then the replaced shard files are
   deleted. Repeating it is harmless, so a request that stopped between 2 and 3 is completed by the next one.

At ImageNet scale a request touches a few 256 MB shards; each is streamed by row group (256 rows), so memory
holds one shard's kept rows while it is written. A request that loses the race for its chain record deletes the
shards it wrote (`discard`), which no `_meta.json` ever named.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import storage
from pipeline.data.shards import META_FILE, DatasetMeta, encode_table, open_shard, read_shard_part, shard_uris
from pipeline.errors import DataError

VERSIONS_DIR = "_versions"
REMOVED = "removed"  # meta.extra[REMOVED]: [{"chain", "request", "rows"}], one entry per request that removed rows


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def meta_bytes(data_uri: str) -> bytes:
    return storage.read_bytes(storage.join(data_uri, META_FILE))


def version_uri(data_uri: str, version: str) -> str:
    return storage.join(data_uri, VERSIONS_DIR, f"{version}.json")


def removals(meta: DatasetMeta) -> list[dict]:
    """The requests that removed rows from this dataset, oldest first."""
    return list(meta.extra.get(REMOVED, []))


@dataclass(frozen=True)
class Removal:
    """A new version of a dataset without some rows, written but not yet installed."""

    data_uri: str
    version_before: str  # sha256 of the `_meta.json` it was made from
    version_after: str  # sha256 of the new `_meta.json`
    rows_removed: int
    written: tuple[str, ...]  # the new shard files


def plan_removal(data_uri: str, ids, chain_uri: str, request_id: str, expected_version: str) -> Removal:
    """Write the dataset's next version without the train rows `ids` (every one must be there), made from the
    version `expected_version` (the sha256 of the `_meta.json` the request was checked against)."""
    before = meta_bytes(data_uri)
    if sha256_hex(before) != expected_version:
        raise DataError(f"{data_uri}/{META_FILE} changed while the request ran (sha256 {sha256_hex(before)}, expected "
                        f"{expected_version}): nothing was removed")
    meta = DatasetMeta.from_json(before.decode("utf-8"), storage.join(data_uri, META_FILE))
    wanted = pa.array(sorted(set(ids)), pa.string())
    shards, written, removed = [], [], 0
    for shard, shard_uri in zip(meta.shards, shard_uris(data_uri, meta)):
        kept, dropped = _without(shard_uri, wanted)
        if not dropped:
            shards.append(shard)
            continue
        removed += dropped
        if kept.num_rows:
            name = f"{shard['file'].split('.', 1)[0]}.{request_id}.parquet"
            shards.append(_write_shard(storage.join(data_uri, name), name, kept))
            written.append(storage.join(data_uri, name))
    if removed != len(wanted):
        raise DataError(f"{data_uri} holds {removed} of the {len(wanted)} train rows to remove: the dataset changed "
                        "since the request was checked")
    meta.shards = shards
    meta.counts = {**meta.counts, "train": meta.counts["train"] - removed}
    meta.extra = {**meta.extra, REMOVED: [*removals(meta), {"chain": chain_uri, "request": request_id,
                                                             "rows": removed}]}
    after = meta.to_json().encode("utf-8")
    for version in (before, after):  # both kept, so install can finish and an audit can name the replaced files
        _keep_version(data_uri, version)
    return Removal(data_uri, sha256_hex(before), sha256_hex(after), removed, tuple(written))


def _without(shard_uri: str, wanted: pa.Array) -> tuple[pa.Table, int]:
    """The shard's rows that are not `wanted` train rows, and how many were (row groups read one at a time)."""
    file = open_shard(shard_uri)
    kept, dropped = [], 0
    for group in range(file.metadata.num_row_groups):
        table = read_shard_part(shard_uri, f"row group {group} of shard", lambda: file.read_row_group(group))
        drop = pc.and_(pc.is_in(table["sample_id"], value_set=wanted), pc.equal(table["split"], "train"))
        count = pc.sum(drop).as_py() or 0
        dropped += count
        kept.append(table.filter(pc.invert(drop)) if count else table)
    return pa.concat_tables(kept), dropped


def _write_shard(uri: str, name: str, table: pa.Table) -> dict:
    data = encode_table(table)
    if not storage.create_once(uri, data) and storage.read_bytes(uri) != data:
        raise DataError(f"{uri} already exists with other content: this request id already removed rows here")
    return {"file": name, "rows": table.num_rows, "sha256": sha256_hex(data)}


def _keep_version(data_uri: str, data: bytes) -> None:
    uri = version_uri(data_uri, sha256_hex(data))
    if not storage.create_once(uri, data) and storage.read_bytes(uri) != data:
        raise DataError(f"{uri} does not hold the dataset version its name says")


def read_version(data_uri: str, version: str) -> DatasetMeta:
    """A kept `_meta.json` by its sha256, checked against it."""
    uri = version_uri(data_uri, version)
    data = storage.read_bytes(uri)
    if sha256_hex(data) != version:
        raise DataError(f"{uri} was changed: its sha256 is {sha256_hex(data)}")
    return DatasetMeta.from_json(data.decode("utf-8"), uri)


def replaced_files(data_uri: str, version_before: str, version_after: str) -> list[str]:
    """The shard files of the earlier version that the later one no longer names (they held removed rows)."""
    keep = {shard["file"] for shard in read_version(data_uri, version_after).shards}
    return [storage.join(data_uri, shard["file"]) for shard in read_version(data_uri, version_before).shards
            if shard["file"] not in keep]


def install(data_uri: str, version_before: str, version_after: str) -> bool:
    """Make `version_after` the dataset's current version and delete the shard files it replaced. True if this
    call installed it, False if it was installed already (the files are deleted either way). Refused when the
    dataset is at neither version: someone else changed it meanwhile, and nothing is touched."""
    current = sha256_hex(meta_bytes(data_uri))
    installed_now = current != version_after
    if installed_now:
        if current != version_before:
            raise DataError(f"{data_uri}/{META_FILE} changed while the request ran (sha256 {current}, expected "
                            f"{version_before}): the new version without the forgotten rows was not installed; "
                            f"it is kept as {version_uri(data_uri, version_after)}")
        after = read_version(data_uri, version_after).to_json().encode("utf-8")
        storage.write_bytes(storage.join(data_uri, META_FILE), after)
        if sha256_hex(meta_bytes(data_uri)) != version_after:
            raise DataError(f"{data_uri}/{META_FILE} does not read back as the version just written")
    for uri in replaced_files(data_uri, version_before, version_after):
        storage.delete_file(uri)
    return installed_now


def discard(removal: Removal) -> None:
    """Delete the shards of a version that will never be installed (its request was not recorded)."""
    for uri in removal.written:
        storage.delete_file(uri)


def missing_removals(meta: DatasetMeta, chain_uri: str, request_ids) -> list[str]:
    """Which of a chain's requests the dataset does not record as removed: their samples may be back."""
    recorded = {entry.get("request") for entry in removals(meta) if entry.get("chain") == chain_uri}
    return [request for request in request_ids if request not in recorded]


def removal_fingerprint(meta: DatasetMeta) -> str | None:
    """None for a dataset nothing was removed from; else the sha256 of its shard list, which changes with every
    removal: a run's identity carries it, so a run made before a removal is never resumed or returned after it."""
    if not removals(meta):
        return None
    return sha256_hex(json.dumps(meta.shards, sort_keys=True).encode("utf-8"))
