"""Result records: one JSON file per run, plus a flattened Parquet index beside them.

Layout under a run URI (a local folder or s3://bucket/prefix):

    records/<run_id>.json   one record each, written once and never overwritten
    records.parquet         every record, flattened; rebuilt after each append

The JSON files are the source of truth. Every worker or Tune trial writes its
own file, so concurrent writers never touch the same object. The Parquet file
is a derived index for pandas/Ray Data readers: two writers racing to rebuild
it can leave it one record short, so a driver that fans out trials calls
`rebuild_parquet(run_uri)` once they are all done.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import math
import re
import uuid
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import DataError

RECORD_KINDS = ("train", "unlearn", "eval", "sweep-trial", "bench")
RECORD_STATUSES = ("ok", "failed")
METRIC_KEYS = ("acc_forget", "acc_retain", "acc_test", "acc_unseen", "mia", "jsd", "jsd_e4",
               "rf_jsd", "rf_jsd_e4", "rf_jsd_floor", "rf_jsd_floor_e4", "avg_gap", "gold")
PHASE_KEYS = ("startup", "data", "unlearn", "epoch_reports", "eval", "total")
# Images that went through a phase (summed over workers): images/s = images[phase] / phases[phase]. `data`: decoded
# by the driver (memory mode); `unlearn` and `eval`: batches the method and the evaluation read. `input_wait`: seconds
# of the phase the workers spent waiting for their next batch (rank 0), which says whether data or compute bound it.
IMAGE_PHASES = ("data", "unlearn", "eval")
VERSION_KEYS = ("python", "torch", "ray", "package")
# Nested dicts that are flattened to "<name>.<key>" columns; `config` is kept whole as a JSON string
# because its shape differs per method and a column per knob would explode the schema.
FLATTENED_FIELDS = ("metrics", "phases", "images", "input_wait", "versions")
RECORDS_DIR = "records"
PARQUET_NAME = "records.parquet"
# run_id becomes a file name locally and an S3 key, so keep it to characters that are safe in both.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class RecordExistsError(DataError):
    """A record with this run_id is already stored under the run URI."""


def utc_now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id(kind: str, method: str, seed: int) -> str:
    """A unique, readable run id such as 'unlearn-lotus-s3-1a2b3c4d'."""
    return f"{kind}-{method}-s{seed}-{uuid.uuid4().hex[:8]}"


def _with_defaults(values: dict | None, keys: tuple[str, ...], default: Any = None) -> dict:
    """Every standard key present (None when unknown), extra keys kept as given."""
    values = dict(values or {})
    return {**{key: values.pop(key, default) for key in keys}, **values}


@dataclasses.dataclass
class ResultRecord:
    """What one run produced: enough to rebuild a paper table row and to rerun it."""

    run_id: str
    kind: str
    method: str
    dataset: str
    model: str
    seed: int
    forget_spec: str
    config: dict = dataclasses.field(default_factory=dict)
    metrics: dict = dataclasses.field(default_factory=dict)
    phases: dict = dataclasses.field(default_factory=dict)
    images: dict = dataclasses.field(default_factory=dict)  # per phase, see IMAGE_PHASES
    input_wait: dict = dataclasses.field(default_factory=dict)  # seconds per phase waiting for input (unlearn, eval)
    unlearn_seconds: float | None = None
    workers: int = 1
    gpus: int = 0
    versions: dict = dataclasses.field(default_factory=dict)
    checkpoint_uri: str | None = None
    checkpoint_sha256: str | None = None
    created: str = dataclasses.field(default_factory=utc_now_iso)
    notes: str = ""
    status: str = "ok"  # "failed": the run produced no model (`error` says why) and no metrics
    error: str | None = None

    def __post_init__(self) -> None:
        if not RUN_ID_PATTERN.match(str(self.run_id)):
            raise DataError(f"run_id {self.run_id!r} must be 1-200 characters from [A-Za-z0-9._-], "
                            "starting with a letter or digit")
        if self.kind not in RECORD_KINDS:
            raise DataError(f"record kind {self.kind!r} is not one of {', '.join(RECORD_KINDS)}")
        if self.status not in RECORD_STATUSES:
            raise DataError(f"record status {self.status!r} is not one of {', '.join(RECORD_STATUSES)}")
        self.seed = int(self.seed)
        self.metrics = _with_defaults(self.metrics, METRIC_KEYS)
        self.metrics["gold"] = bool(self.metrics["gold"])
        self.phases = _with_defaults(self.phases, PHASE_KEYS)
        self.images = _with_defaults(self.images, IMAGE_PHASES)
        self.input_wait = _with_defaults(self.input_wait, ("unlearn", "eval"))
        self.versions = _with_defaults(self.versions, VERSION_KEYS)
        if self.unlearn_seconds is not None:
            self.unlearn_seconds = float(self.unlearn_seconds)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        # allow_nan=False: NaN is not JSON; a metric that could not be computed is stored as None.
        text = json.dumps(_nan_to_none(self.to_dict()), indent=2, sort_keys=True, allow_nan=False, default=str)
        return text + "\n"

    @classmethod
    def from_dict(cls, values: dict, source: str = "record") -> "ResultRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - values.keys())
        if missing:
            raise DataError(f"{source}: result record lacks {', '.join(missing)}")
        # Unknown keys are ignored so that records written by a newer version still load here.
        return cls(**{key: value for key, value in values.items() if key in names})


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(item) for item in value]
    return value


def record_uri(run_uri: str, run_id: str) -> str:
    return storage.join(run_uri, RECORDS_DIR, f"{run_id}.json")


def append_record(run_uri: str, record: ResultRecord, update_parquet: bool = True) -> str:
    """Store `record` as run_uri/records/<run_id>.json, refresh records.parquet; return the record's URI.

    Refuses (RecordExistsError) to replace a stored record with the same run_id, race-free
    in both places: locally a hard link publishes the file, on S3 a conditional PUT
    (`If-None-Match: *`) creates the object only where none exists.
    Rebuilding the Parquet index reads every record of the run, so a sweep with
    many trials passes update_parquet=False and calls rebuild_parquet once at the end.
    """
    storage.ensure_bucket(run_uri)
    uri = record_uri(run_uri, record.run_id)
    if not storage.create_once(uri, record.to_json().encode("utf-8")):
        raise RecordExistsError(f"a record for run_id {record.run_id!r} already exists at {uri}")
    if update_parquet:
        rebuild_parquet(run_uri)
    return uri


def rebuild_parquet(run_uri: str) -> str:
    """Rewrite run_uri/records.parquet from every JSON record under the run (atomically)."""
    frame = records_frame(load_records(run_uri))
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    uri = storage.join(run_uri, PARQUET_NAME)
    storage.write_bytes(uri, buffer.getvalue())
    return uri


def _parse_record(uri: str) -> ResultRecord:
    try:
        values = json.loads(storage.read_text(uri))
    except json.JSONDecodeError as exc:
        raise DataError(f"{uri} is not valid JSON: {exc}") from exc
    if not isinstance(values, dict):
        raise DataError(f"{uri} does not hold a JSON object")
    return ResultRecord.from_dict(values, source=uri)


def has_records(run_uri: str) -> bool:
    """Whether a run URI holds any result record (a missing S3 bucket is still an error, not "no records")."""
    storage.ensure_bucket(run_uri)
    return bool(storage.list_files(storage.join(run_uri, RECORDS_DIR), ".json"))


def load_records(*run_uris: str) -> list[ResultRecord]:
    """Every record stored under the given run URIs, in run-URI then run_id order."""
    if not run_uris:
        raise DataError("no run URI given to load result records from")
    records: list[ResultRecord] = []
    seen: dict[str, str] = {}
    for run_uri in run_uris:
        storage.ensure_bucket(run_uri)
        uris = storage.list_files(storage.join(run_uri, RECORDS_DIR), ".json")
        if not uris:
            raise DataError(f"no result records under {run_uri} (expected {storage.join(run_uri, RECORDS_DIR)}/*.json)")
        for uri in uris:
            record = _parse_record(uri)
            # The same record twice (a run URI passed twice, or a copied run) would count a seed twice.
            if record.run_id in seen:
                raise DataError(f"run_id {record.run_id!r} appears in both {seen[record.run_id]} and {uri}; "
                                "pass each run once")
            seen[record.run_id] = uri
            records.append(record)
    return records


def flatten_record(record: ResultRecord) -> dict:
    """One row: scalars as they are, metrics/phases/versions as 'metrics.acc_forget' etc., config as JSON."""
    row: dict[str, Any] = {}
    for name, value in record.to_dict().items():
        if name in FLATTENED_FIELDS:
            row.update({f"{name}.{key}": item for key, item in value.items()})
        elif name == "config":
            row["config"] = json.dumps(_nan_to_none(value), sort_keys=True, default=str)
        else:
            row[name] = value
    return row


def _standard_columns() -> list[str]:
    columns = []
    for field in dataclasses.fields(ResultRecord):
        keys = {"metrics": METRIC_KEYS, "phases": PHASE_KEYS, "versions": VERSION_KEYS}.get(field.name)
        columns.extend([f"{field.name}.{key}" for key in keys] if keys else [field.name])
    return columns


def records_frame(records: list[ResultRecord]) -> pd.DataFrame:
    """A flat DataFrame, one row per record, standard columns first (also for an empty list)."""
    rows = [flatten_record(record) for record in records]
    standard = _standard_columns()
    extra = sorted({key for row in rows for key in row} - set(standard))
    frame = pd.DataFrame(rows, columns=standard + extra)
    # The standard metrics and phases are numbers even when every value is None (NaN then), so
    # Parquet always types them as float64; extra keys (e.g. a trial's "feasible") keep their type.
    numeric = [f"metrics.{key}" for key in METRIC_KEYS if key != "gold"] + [f"phases.{key}" for key in PHASE_KEYS]
    frame[numeric + ["unlearn_seconds"]] = frame[numeric + ["unlearn_seconds"]].astype("float64")
    frame["metrics.gold"] = frame["metrics.gold"].astype(bool)
    return frame
