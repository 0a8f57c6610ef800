"""Prepare at scale: plan the rows, cut them into shards, build the shards in parallel, resume after a stop.

1. The source (pipeline/data/converters.py) lists its rows cheaply and deterministically, in the order
   they are stored (each split in a seeded random order for class-ordered sources): sample id,
   label, split and a key that makes the image bytes. A probe of a few rows spread over the plan gives
   the mean image size, hence a fixed number of rows per shard for about `shard_bytes` each.
2. Each shard is built whole by one worker process: make its rows' bytes, write the Parquet file
   atomically, then its record `_prepare/part-00007.json` {fingerprint, file, rows, sha256}.
3. `_prepare/plan.json` holds the conversion's fingerprint (source, seed, generator settings, the rows
   in order and the name of that order, rows per shard). Rerunning the same conversion keeps every shard
   whose bytes match its record and builds only the rest; a different conversion into the same folder
   is refused.
4. `_meta.json` comes last, so a folder without it is an unfinished conversion, never a dataset.

`_prepare/` stays after success: a few KB that record how the shards were made, and let an `--overwrite`
of the very same conversion keep its verified shards. Readers never look at it; deleting it is harmless.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from pipeline import storage
from pipeline.data.removal import removals
from pipeline.data.shards import (META_FILE, ROW_GROUP_ROWS, SPLITS, DatasetMeta, append_row, check_row,
                                  empty_columns, encode_shard, read_meta, shard_file_name, shard_record)
from pipeline.errors import DataError

PLAN_DIR = "_prepare"
PLAN_FILE = "plan.json"
PLAN_FORMAT = "unlearn-prepare/1"
PROBE_ROWS = 16
VERIFY_THREADS = 8
HASH_CHUNK_BYTES = 8 * 1024**2
Progress = Callable[[str], None]


def convert(source, out: str, overwrite: bool = False, shard_bytes: int = 256 * 1024**2, procs: int | None = None,
            progress: Progress | None = None, progress_every_s: float = 5.0) -> DatasetMeta:
    """Write `source` (a converters.Source) as shards plus `_meta.json` at `out`, resuming a stopped run."""
    out = str(out)
    storage.ensure_bucket(out)
    replacing = _finished_dataset_to_replace(out, overwrite)
    meta, rows = source.plan()
    _check_rows(rows, meta.num_classes, source)
    if replacing:  # only now that the new source planned fine: from here on `out` is an unfinished conversion
        storage.delete_file(storage.join(out, META_FILE))
    rows_per_shard = _rows_per_shard(source, rows, shard_bytes)
    shards = [rows[start:start + rows_per_shard] for start in range(0, len(rows), rows_per_shard)]
    plan = _plan(source, meta, rows, rows_per_shard, len(shards))
    if _start_or_resume(out, plan, overwrite):
        _remove_stale_temp_files(out)
    done = _completed_shards(out, plan["fingerprint"], len(shards))
    todo = [index for index in range(len(shards)) if index not in done]
    reporter = ProgressLines(len(rows), sum(record["rows"] for record in done.values()), progress, progress_every_s)
    if done:
        reporter.say(f"  resuming: {len(done)} of {len(shards)} shards already written and verified")
    records = {**done, **_build(source, out, shards, todo, plan["fingerprint"], procs, reporter)}
    reporter.finish(len(shards), skipped=len(done))
    meta.shards = [records[index] for index in range(len(shards))]
    counts = Counter(row.split for row in rows)
    meta.counts = {split: counts.get(split, 0) for split in SPLITS}
    meta.extra.update(source.describe())
    meta.extra.setdefault("created_unix", int(time.time()))
    storage.write_text(storage.join(out, META_FILE), meta.to_json())
    return meta


# ---------------------------------------------------------------- planning

def _finished_dataset_to_replace(out: str, overwrite: bool) -> bool:
    """Whether `out` holds a finished dataset that --overwrite replaces (refused without it).

    Its `_meta.json` is deleted before any shard changes, so a stopped overwrite never looks like a dataset."""
    if not storage.exists(storage.join(out, META_FILE)):
        return False
    if not overwrite:
        raise DataError(f"{out} already holds a dataset; pass --overwrite to replace it")
    removed = removals(read_meta(out))
    if removed:  # the source still holds them: a new conversion would train the next model on forgotten samples
        raise DataError(f"{out} had samples removed by {len(removed)} deletion request(s) (first: "
                        f"{removed[0].get('request')} of {removed[0].get('chain')}); preparing it again from its "
                        "source would bring them back. Remove them from the source first, then delete the dataset "
                        "folder and prepare it anew")
    return True


def _check_rows(rows: list, num_classes: int, source) -> None:
    if not rows:
        raise DataError(f"{source.describe()['source']}: no samples to write")
    seen: set[str] = set()
    for row in rows:
        check_row(row.sample_id, row.label, row.split, num_classes)
        if row.sample_id in seen:
            raise DataError(f"duplicate sample_id {row.sample_id!r}")
        seen.add(row.sample_id)


def _rows_per_shard(source, rows: list, shard_bytes: int) -> int:
    """Rows per shard for about `shard_bytes` each, from the mean size of rows spread over the plan
    (deterministic, so a rerun cuts the same shards)."""
    sizes = [len(data) for data in source.images([rows[index].key for index in spread(PROBE_ROWS, len(rows))])]
    return max(1, int(shard_bytes // max(1.0, sum(sizes) / len(sizes))))


def spread(count: int, total: int) -> list[int]:
    """`count` positions spread evenly over 0..total-1 (all of them when total <= count): a deterministic probe."""
    count = min(count, total)
    return sorted({round(k * (total - 1) / max(count - 1, 1)) for k in range(count)})


def _plan(source, meta: DatasetMeta, rows: list, rows_per_shard: int, shard_count: int) -> dict:
    rows_digest = hashlib.sha256()
    for row in rows:
        rows_digest.update(f"{row.sample_id}\t{row.label}\t{row.split}\t{row.key}\n".encode())
    # row_order is in rows_sha256 already; named too, so that resuming a run of the class-by-class order is
    # refused for that reason rather than as "the list of samples changed"
    plan = {"format": PLAN_FORMAT, **source.describe(), "row_order": meta.extra.get("row_order"), "rows": len(rows),
            "rows_sha256": rows_digest.hexdigest(), "rows_per_shard": rows_per_shard, "shards": shard_count}
    plan["fingerprint"] = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    return plan


def _start_or_resume(out: str, plan: dict, overwrite: bool) -> bool:
    """True when `out` holds an unfinished run of this very plan; refuse one of another plan."""
    plan_uri = storage.join(out, PLAN_DIR, PLAN_FILE)
    if not overwrite and storage.exists(plan_uri):
        try:
            stored = json.loads(storage.read_text(plan_uri))
        except ValueError:
            stored = {}
        if stored.get("fingerprint") == plan["fingerprint"]:
            return True
        raise DataError(f"{out} holds an unfinished conversion with other settings ({_differences(stored, plan)}); "
                        "rerun it with the same settings to resume, pass --overwrite to start over, "
                        "or choose another --out")
    storage.write_text(plan_uri, json.dumps(plan, indent=2, sort_keys=True))
    return False


def _differences(stored: dict, plan: dict) -> str:
    labels = {"source": "source", "seed": "seed", "synthetic": "synthetic settings", "row_order": "row order",
              "rows": "rows", "rows_per_shard": "rows per shard (--shard-mb)"}
    found = [f"{label} {stored.get(key)!r} there, {plan.get(key)!r} now"
             for key, label in labels.items() if stored.get(key) != plan.get(key)]
    if not found and stored.get("rows_sha256") != plan.get("rows_sha256"):
        found = ["the source's list of samples changed"]
    return "; ".join(found) or f"{PLAN_DIR}/{PLAN_FILE} is unreadable or of another format"


# ---------------------------------------------------------------- resuming

def _record_name(index: int) -> str:
    return f"part-{index:05d}.json"


def _record_uri(out: str, index: int) -> str:
    return storage.join(out, PLAN_DIR, _record_name(index))


def _completed_shards(out: str, fingerprint: str, shard_count: int) -> dict[int, dict]:
    """{index: shard record} of the shards written by this plan whose bytes still match their sha256."""
    expected = {_record_name(index): index for index in range(shard_count)}
    existing = {os.path.basename(uri) for uri in storage.list_files(storage.join(out, PLAN_DIR), ".json")}

    def verified(name: str) -> tuple[int, dict] | None:
        index, record_uri = expected[name], _record_uri(out, expected[name])
        try:
            record = json.loads(storage.read_text(record_uri))
        except (DataError, ValueError):
            return None
        shard = {key: record.get(key) for key in ("file", "rows", "sha256")}
        if record.get("fingerprint") != fingerprint or shard["file"] != shard_file_name(index):
            return None
        if _sha256_of(storage.join(out, shard["file"])) != shard["sha256"]:
            return None  # missing or changed since: build it again
        return index, shard

    with ThreadPoolExecutor(max_workers=VERIFY_THREADS) as pool:
        return dict(found for found in pool.map(verified, sorted(existing & expected.keys())) if found)


def _sha256_of(uri: str) -> str | None:
    """The file's sha256, streamed (shards are hundreds of MB); None when it does not exist. Read through
    storage.retrying, so a storage outage is a StorageUnavailableError (exit 75, rerun later), not bad data."""
    if not storage.exists(uri):
        return None
    fs, path = storage.resolve(uri)

    def digest() -> str:
        hashed = hashlib.sha256()
        with fs.open_input_stream(path) as stream:
            while chunk := stream.read(HASH_CHUNK_BYTES):
                hashed.update(chunk)
        return hashed.hexdigest()

    return storage.retrying("read", uri, digest)


def _remove_stale_temp_files(out: str) -> None:
    """Temp files of a local write cut short by a stop (storage.write_bytes names them `.tmp-*`)."""
    if storage.is_s3(out):
        return  # an S3 PUT leaves nothing behind
    for folder in (out, os.path.join(out, PLAN_DIR)):
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            if name.startswith(".tmp-"):
                os.unlink(os.path.join(folder, name))


# ---------------------------------------------------------------- building

def build_shard(source, out: str, index: int, rows: list, fingerprint: str,
                on_rows: Callable[[int], None] | None = None) -> dict:
    """Make one shard's images, write the shard, then its record. Runs in a worker process (or in-process)."""
    columns = empty_columns()
    for start in range(0, len(rows), ROW_GROUP_ROWS):
        chunk = rows[start:start + ROW_GROUP_ROWS]
        for row, image in zip(chunk, source.images([row.key for row in chunk])):
            append_row(columns, row.sample_id, row.label, image, row.split)
        if on_rows:
            on_rows(len(chunk))
    data = encode_shard(columns)
    record = shard_record(shard_file_name(index), len(rows), data)
    storage.write_bytes(storage.join(out, record["file"]), data)
    storage.write_text(_record_uri(out, index), json.dumps({**record, "fingerprint": fingerprint}, sort_keys=True))
    return record


def _build(source, out: str, shards: list, todo: list[int], fingerprint: str, procs: int | None,
           reporter: "ProgressLines") -> dict[int, dict]:
    procs = min(procs or os.cpu_count() or 1, len(todo))
    if procs <= 1:  # one shard (digits) or --procs 1: no process start-up to pay
        return {index: build_shard(source, out, index, shards[index], fingerprint, reporter.advance)
                for index in todo}
    # spawn: a fresh interpreter per worker, never a fork of a process whose pyarrow/S3 threads are running
    pool = ProcessPoolExecutor(max_workers=procs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker)
    records = {}
    try:
        futures = {pool.submit(build_shard, source, out, index, shards[index], fingerprint): index for index in todo}
        for future in as_completed(futures):
            record = future.result()
            records[futures[future]] = record
            reporter.advance(record["rows"])
    except BrokenProcessPool as exc:
        _stop(pool)
        raise DataError(f"a prepare worker process died ({exc}; out of memory? try fewer --procs or a smaller "
                        "--shard-mb); rerun the same command to resume") from exc
    except BaseException:  # Ctrl-C, a bad image, a storage error: stop the workers now, keep finished shards
        _stop(pool)
        raise
    pool.shutdown()
    return records


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    try:  # Linux: die with the parent, so a killed `unlearn prepare` leaves no workers behind
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(pool: ProcessPoolExecutor) -> None:
    processes = list((pool._processes or {}).values())  # no public handle before Python 3.14's terminate_workers
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)


# ---------------------------------------------------------------- progress

class ProgressLines:
    """`  12,480/50,000 images  1,234 img/s  ETA 30 s` at most every `every_s` seconds, and a summary."""

    def __init__(self, total: int, done: int, emit: Progress | None, every_s: float):
        self.total, self.done, self.written = total, done, 0
        self.emit, self.every_s = emit, every_s
        self.started = self.last = time.perf_counter()

    def say(self, line: str) -> None:
        if self.emit:
            self.emit(line)

    def rate(self) -> float:
        return self.written / max(time.perf_counter() - self.started, 1e-9)

    def advance(self, rows: int) -> None:
        self.done += rows
        self.written += rows
        if time.perf_counter() - self.last >= self.every_s:
            self.last = time.perf_counter()
            rate = self.rate()
            eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
            self.say(f"  {self.done:,}/{self.total:,} images  {rate:,.0f} img/s  ETA {eta}")

    def finish(self, shards: int, skipped: int) -> None:
        seconds = time.perf_counter() - self.started
        resumed = f"; {skipped} shard(s) were already written" if skipped else ""
        self.say(f"  {self.total:,} images in {shards} shard(s): wrote {self.written:,} in {seconds:.1f} s, "
                 f"{self.rate():,.0f} img/s{resumed}")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
