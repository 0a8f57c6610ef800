"""The Parquet shard format: one row per image plus a `_meta.json` beside the shards.

Columns: `sample_id` (string, unique), `label` (int32), `image` (encoded bytes as
stored at the source), `split` (`train`/`val`/`test`). `_meta.json` is written
last, so a folder without it is an unfinished conversion, never a dataset.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import DataError

FORMAT = "unlearn-shards/1"
META_FILE = "_meta.json"
SPLITS = ("train", "val", "test")
SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("label", pa.int32()),
    ("image", pa.binary()),
    ("split", pa.string()),
])
INDEX_COLUMNS = ["sample_id", "label", "split"]


@dataclass
class DatasetMeta:
    name: str
    num_classes: int
    class_names: list[str]
    height: int
    width: int
    channels: int
    encoding: str
    counts: dict[str, int] = field(default_factory=dict)
    shards: list[dict] = field(default_factory=list)
    mean: list[float] | None = None
    std: list[float] | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        body = {"format": FORMAT, **self.__dict__}
        return json.dumps(body, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> "DatasetMeta":
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where} is not valid JSON: {exc}") from exc
        if body.pop("format", None) != FORMAT:
            raise DataError(f"{where} is not an {FORMAT} metadata file")
        try:
            return cls(**body)
        except TypeError as exc:
            raise DataError(f"{where} has unexpected or missing fields: {exc}") from exc


class ShardWriter:
    """Stream rows into Parquet shards of about `shard_bytes` each, then write `_meta.json`.

    Memory stays bounded by one shard, so converting ImageNet never holds it all.
    """

    def __init__(self, uri: str, meta: DatasetMeta, shard_bytes: int = 256 * 1024**2, overwrite: bool = False):
        self.uri, self.meta, self.shard_bytes = str(uri), meta, shard_bytes
        storage.ensure_bucket(self.uri)
        if storage.exists(storage.join(self.uri, META_FILE)) and not overwrite:
            raise DataError(f"{self.uri} already holds a dataset; pass --overwrite to replace it")
        self._rows: dict[str, list] = {name: [] for name in SCHEMA.names}
        self._pending_bytes = 0
        self._seen_ids: set[str] = set()
        self._counts: Counter = Counter()
        self.meta.shards = []

    def add(self, sample_id: str, label: int, image: bytes, split: str) -> None:
        if split not in SPLITS:
            raise DataError(f"sample {sample_id!r}: split must be one of {SPLITS}, got {split!r}")
        if not 0 <= label < self.meta.num_classes:
            raise DataError(f"sample {sample_id!r}: label {label} outside 0..{self.meta.num_classes - 1}")
        if sample_id in self._seen_ids:
            raise DataError(f"duplicate sample_id {sample_id!r}")
        self._seen_ids.add(sample_id)
        for name, value in zip(SCHEMA.names, (sample_id, int(label), image, split)):
            self._rows[name].append(value)
        self._counts[split] += 1
        self._pending_bytes += len(image)
        if self._pending_bytes >= self.shard_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._rows["sample_id"]:
            return
        table = pa.table(self._rows, schema=SCHEMA)
        buffer = io.BytesIO()
        pq.write_table(table, buffer, row_group_size=1024)
        data = buffer.getvalue()
        file_name = f"part-{len(self.meta.shards):05d}.parquet"
        storage.write_bytes(storage.join(self.uri, file_name), data)
        self.meta.shards.append({"file": file_name, "rows": table.num_rows, "sha256": hashlib.sha256(data).hexdigest()})
        self._rows = {name: [] for name in SCHEMA.names}
        self._pending_bytes = 0

    def close(self) -> DatasetMeta:
        self._flush()
        if not self.meta.shards:
            raise DataError("no samples were written")
        self.meta.counts = {split: self._counts.get(split, 0) for split in SPLITS}
        self.meta.extra.setdefault("created_unix", int(time.time()))
        storage.write_text(storage.join(self.uri, META_FILE), self.meta.to_json())
        return self.meta


def read_meta(uri: str) -> DatasetMeta:
    meta_uri = storage.join(uri, META_FILE)
    if not storage.exists(meta_uri):
        raise DataError(f"no dataset at {uri}: {META_FILE} is missing (run `unlearn prepare` first)")
    return DatasetMeta.from_json(storage.read_text(meta_uri), meta_uri)


def shard_uris(uri: str, meta: DatasetMeta) -> list[str]:
    return [storage.join(uri, shard["file"]) for shard in meta.shards]


def verify_checksums(uri: str, meta: DatasetMeta, threads: int = 8) -> None:
    """Raise DataError naming every shard whose bytes differ from the sha256 in `_meta.json`."""

    def check(shard: dict) -> str | None:
        digest = hashlib.sha256(storage.read_bytes(storage.join(uri, shard["file"]))).hexdigest()
        return None if digest == shard["sha256"] else shard["file"]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        bad = [name for name in pool.map(check, meta.shards) if name]
    if bad:
        raise DataError(f"checksum mismatch in {uri}: {', '.join(bad)} (corrupt or modified shards)")


def read_table(uri: str, meta: DatasetMeta, columns: list[str] | None = None) -> pa.Table:
    """Read shards into one table (only for index columns or small data: images stay on disk otherwise)."""
    columns = columns or SCHEMA.names
    tables = []
    for shard_uri in shard_uris(uri, meta):
        fs, path = storage.resolve(shard_uri)
        try:
            file = pq.ParquetFile(path, filesystem=fs)
        except (OSError, pa.ArrowInvalid) as exc:
            raise DataError(f"cannot read shard {shard_uri}: {exc}") from exc
        missing = [c for c in columns if c not in file.schema_arrow.names]
        if missing:
            raise DataError(f"shard {shard_uri} lacks column(s) {missing}; expected {SCHEMA.names}")
        tables.append(file.read(columns=columns))
    return pa.concat_tables(tables)


def read_index(uri: str, meta: DatasetMeta) -> pa.Table:
    """The sample_id/label/split columns of every shard, checked for label range and unique ids."""
    index = read_table(uri, meta, INDEX_COLUMNS)
    labels = index.column("label").to_numpy()
    if labels.size and (labels.min() < 0 or labels.max() >= meta.num_classes):
        raise DataError(f"labels in {uri} fall outside 0..{meta.num_classes - 1} "
                        f"(found {int(labels.min())}..{int(labels.max())})")
    if len(set(index.column("sample_id").to_pylist())) != index.num_rows:
        raise DataError(f"duplicate sample_id values in {uri}")
    return index
