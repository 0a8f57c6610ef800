"""The Parquet shard format: one row per image plus a `_meta.json` beside the shards.

Columns: `sample_id` (string, unique), `label` (int32), `image` (encoded bytes as
stored at the source), `split` (`train`/`val`/`test`), and `width`/`height` (int32,
the stored image's size, read from its header when the shard is written). Shards
written before `width`/`height` existed lack them, so readers ask for the four core
columns unless they need the sizes. Row groups hold at most 256 rows, so a reader
can decode one shard in parallel pieces. `_meta.json` is written last, so a folder
without it is an unfinished conversion, never a dataset. Its `extra.row_order` says how
rows were ordered (see ROW_ORDER_SHUFFLED).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

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
    ("width", pa.int32()),
    ("height", pa.int32()),
])
CORE_COLUMNS = ["sample_id", "label", "image", "split"]  # present in every shard, old or new
INDEX_COLUMNS = ["sample_id", "label", "split"]
ROW_GROUP_ROWS = 256
# How images reach the model's square input size (the decode lives in pipeline/data/images.py):
# squash: resize to size x size, only for data already at size (digits, the square synthetic set);
# shorter_side_crop: the torchvision/timm ImageNet eval transform (shorter side to 256 for 224, centre crop).
RESIZE_MODES = ("squash", "shorter_side_crop")
# `extra.row_order` of shards whose splits hold their rows in a seeded random order (pipeline/data/converters.py).
# A reader shuffles only within a few consecutive row groups, so rows stored class by class give batches
# of a couple of classes; these sources listed them so before prepare recorded a row order:
ROW_ORDER_SHUFFLED = "seeded-shuffle"
CLASS_ORDERED_SOURCES = ("synthetic", "synthetic-imagenet", "imagefolder:")


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
    resize: str = "squash"  # see RESIZE_MODES; `height`/`width` stay the input-size hint

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise DataError(f"dataset {self.name!r}: resize must be one of {RESIZE_MODES}, got {self.resize!r}")

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
            return cls(**body)  # files from before `resize` existed load as "squash", what they were made for
        except TypeError as exc:
            raise DataError(f"{where} has unexpected or missing fields: {exc}") from exc
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from exc


def check_row(sample_id: str, label: int, split: str, num_classes: int) -> None:
    if split not in SPLITS:
        raise DataError(f"sample {sample_id!r}: split must be one of {SPLITS}, got {split!r}")
    if not 0 <= label < num_classes:
        raise DataError(f"sample {sample_id!r}: label {label} outside 0..{num_classes - 1}")


def image_size(data: bytes, sample_id: str) -> tuple[int, int]:
    """(width, height) of encoded image bytes, from the header alone (no pixel decode)."""
    return image_header(data, sample_id)[0]


def image_header(data: bytes, sample_id: str) -> tuple[tuple[int, int], str]:
    """((width, height), PIL mode) from the header alone; a DataError naming the sample if it is no image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size, image.mode
    except UnidentifiedImageError as exc:
        raise DataError(f"corrupt image for sample {sample_id!r}: not an image format PIL reads "
                        f"({len(data)} bytes)") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"corrupt image for sample {sample_id!r}: {exc}") from exc


def empty_columns() -> dict[str, list]:
    return {name: [] for name in SCHEMA.names}


def append_row(columns: dict[str, list], sample_id: str, label: int, image: bytes, split: str) -> None:
    """Add one row to column lists, with the image's stored size read from its header."""
    width, height = image_size(image, sample_id)
    for name, value in zip(SCHEMA.names, (sample_id, int(label), image, split, width, height)):
        columns[name].append(value)


def encode_shard(columns: dict[str, list]) -> bytes:
    """One Parquet file from column lists. Every writer goes through here, so the same rows give the same bytes."""
    return encode_table(pa.table(columns, schema=SCHEMA))


def encode_table(table: pa.Table) -> bytes:
    """One Parquet file from a table of shard rows (its own columns: shards written before width/height keep
    their four), with the shards' row groups, codecs and dictionaries."""
    small = [name for name in table.column_names if name != "image"]
    buffer = io.BytesIO()
    # Encoded images are already compressed and all distinct: a codec or a dictionary on them only costs time.
    pq.write_table(table, buffer, row_group_size=ROW_GROUP_ROWS, use_dictionary=small,
                   compression={name: "snappy" if name in small else "none" for name in table.column_names})
    return buffer.getvalue()


def shard_record(file_name: str, rows: int, data: bytes) -> dict:
    return {"file": file_name, "rows": rows, "sha256": hashlib.sha256(data).hexdigest()}


def shard_file_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


class ShardWriter:
    """Stream rows into Parquet shards of about `shard_bytes` each, then write `_meta.json`.

    Memory stays bounded by one shard, so converting ImageNet never holds it all. One process, no
    resume: `unlearn prepare` goes through pipeline/data/prepare.py, which writes the same bytes.
    """

    def __init__(self, uri: str, meta: DatasetMeta, shard_bytes: int = 256 * 1024**2, overwrite: bool = False):
        self.uri, self.meta, self.shard_bytes = str(uri), meta, shard_bytes
        storage.ensure_bucket(self.uri)
        if storage.exists(storage.join(self.uri, META_FILE)) and not overwrite:
            raise DataError(f"{self.uri} already holds a dataset; pass --overwrite to replace it")
        self._rows = empty_columns()
        self._pending_bytes = 0
        self._seen_ids: set[str] = set()
        self._counts: Counter = Counter()
        self.meta.shards = []

    def add(self, sample_id: str, label: int, image: bytes, split: str) -> None:
        check_row(sample_id, label, split, self.meta.num_classes)
        if sample_id in self._seen_ids:
            raise DataError(f"duplicate sample_id {sample_id!r}")
        append_row(self._rows, sample_id, label, image, split)
        self._seen_ids.add(sample_id)
        self._counts[split] += 1
        self._pending_bytes += len(image)
        if self._pending_bytes >= self.shard_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._rows["sample_id"]:
            return
        data = encode_shard(self._rows)
        file_name = shard_file_name(len(self.meta.shards))
        storage.write_bytes(storage.join(self.uri, file_name), data)
        self.meta.shards.append(shard_record(file_name, len(self._rows["sample_id"]), data))
        self._rows = empty_columns()
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
    if not storage.is_s3(uri) and not os.path.exists(uri):
        raise DataError(f"no dataset at {uri}: the path does not exist")
    if not storage.exists(meta_uri):
        raise DataError(f"no dataset at {uri}: {META_FILE} is missing (run `unlearn prepare` first)")
    meta = DatasetMeta.from_json(storage.read_text(meta_uri), meta_uri)
    if stored_class_by_class(meta):
        # Every run path reads the meta first. Warned from this line, so Python's default filter shows it once
        # per dataset and process however many callers read it.
        warnings.warn(f"{uri} stores its rows class by class (prepared from {meta.extra['source']} before prepare "
                      "wrote them in a seeded random order): a shuffled pass mixes only a few consecutive row "
                      "groups (about 445 rows at 224 px), so each batch holds the few classes of those rows, which "
                      "biases gradients and BatchNorm statistics. Run the same `unlearn prepare` again with "
                      "--overwrite.")
    return meta


def stored_class_by_class(meta: DatasetMeta) -> bool:
    """Shards from a source that listed its rows class by class, written before prepare shuffled them."""
    source = str(meta.extra.get("source", ""))
    return ("row_order" not in meta.extra and
            any(source == name or name.endswith(":") and source.startswith(name) for name in CLASS_ORDERED_SOURCES))


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
    """Read shards into one table (only for index columns or small data: images stay on disk otherwise).

    By default the four core columns, which old shards (without width/height) have too."""
    columns = columns or CORE_COLUMNS
    tables = []
    for shard_uri in shard_uris(uri, meta):
        file = open_shard(shard_uri)
        missing = [c for c in columns if c not in file.schema_arrow.names]
        if missing:
            raise DataError(f"shard {shard_uri} lacks column(s) {missing}; it has {file.schema_arrow.names}")
        tables.append(read_shard_part(shard_uri, "shard", lambda: file.read(columns=columns)))
    return pa.concat_tables(tables)


def open_shard(shard_uri: str) -> pq.ParquetFile:
    """A shard's Parquet file, its footer read (errors as in `read_shard_part`)."""
    fs, path = storage.resolve(shard_uri)
    return read_shard_part(shard_uri, "shard", lambda: pq.ParquetFile(path, filesystem=fs))


def read_shard_part(shard_uri: str, part: str, read):
    """`read()` of (`part` of) a shard. A file that is not Parquet or is corrupt: DataError at once. Storage that
    fails in a way that may pass is tried again, then StorageUnavailableError (storage.retrying)."""
    try:
        return storage.retrying(f"read {part}", shard_uri, read)
    except pa.ArrowInvalid as exc:
        raise DataError(f"cannot read {part} {shard_uri}: {exc}") from exc


def read_index(uri: str, meta: DatasetMeta) -> pa.Table:
    """The sample_id/label/split columns of every shard, checked for label range and unique ids."""
    index = read_table(uri, meta, INDEX_COLUMNS)
    labels = index.column("label").to_numpy()
    outside = np.flatnonzero((labels < 0) | (labels >= meta.num_classes))
    if outside.size:
        row = int(outside[0])
        shard = meta.shards[int(np.searchsorted(np.cumsum([s["rows"] for s in meta.shards]), row, side="right"))]
        raise DataError(f"label {int(labels[row])} of sample {index.column('sample_id')[row].as_py()!r} in shard "
                        f"{shard['file']} of {uri} is outside 0..{meta.num_classes - 1} "
                        f"({outside.size} such label(s) in all)")
    if len(set(index.column("sample_id").to_pylist())) != index.num_rows:
        raise DataError(f"duplicate sample_id values in {uri}")
    return index
