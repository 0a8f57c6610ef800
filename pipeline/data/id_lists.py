"""Lists of sample ids (a deletion request, the `ids:FILE` forget spec) and their check against a shard index.

A list comes as a text file (one id per line; blank lines and `#` comments skipped), a CSV file whose
first line is a header naming the id column (`sample_id`, or the one `column` names), or a Parquet file (the
`sample_id` column, another one named by `column`, or the only column there is). A CSV file without that header
is refused, never read: its first line would be taken for the header and its first id silently dropped.
The check needs only the index columns (no image is decoded): 100,000 ids against a million-row
index take well under a second.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import DataError

DEFAULT_COLUMN = "sample_id"


def read_sample_ids(uri: str, column: str | None = None) -> list[str]:
    """The ids a file names, in file order, duplicates kept (the caller decides what they mean)."""
    try:
        data = storage.read_bytes(uri)
    except DataError as exc:
        raise DataError(f"sample id list {uri}: {exc}") from exc
    lowered = uri.lower()
    if lowered.endswith((".parquet", ".csv")):
        return _column(_read_table(uri, data, column), uri, column)
    if column:
        raise DataError(f"sample id list {uri}: --id-column applies to .csv and .parquet files, not a text list")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"sample id list {uri} is not UTF-8 text (use .csv or .parquet for tables)") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _read_table(uri: str, data: bytes, column: str | None) -> pa.Table:
    try:
        if uri.lower().endswith(".parquet"):
            return pq.read_table(io.BytesIO(data))
        header = _csv_header(uri, data, column)
        # Every column stays text: the id "007" must not become the number 7.
        options = pacsv.ConvertOptions(column_types={name: pa.string() for name in header})
        return pacsv.read_csv(io.BytesIO(data), convert_options=options)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"sample id list {uri} cannot be read: {str(exc).splitlines()[0]}") from exc


def _csv_header(uri: str, data: bytes, column: str | None) -> list[str]:
    """The CSV's header, refused unless it names the id column: a file without a header starts with an id, and
    reading that line as a header would drop the id without a word."""
    first = data.split(b"\n", 1)[0].decode("utf-8-sig").rstrip("\r")
    header = next(csv.reader(io.StringIO(first)), [])
    wanted = column or DEFAULT_COLUMN
    if wanted in header:
        return header
    shown = first if len(first) <= 80 else first[:77] + "..."
    if column:
        raise DataError(f"sample id list {uri}: its header line ({shown!r}) has no column {column!r}; name the id "
                        "column with --id-column, as the header spells it")
    raise DataError(f"sample id list {uri}: its first line ({shown!r}) does not name a {DEFAULT_COLUMN!r} column, so "
                    "it is either a header with another id column (name it with --id-column) or the first id of a "
                    f"list without a header (add the line {DEFAULT_COLUMN} at the top, or give the ids as a .txt "
                    "file, one per line). Nothing was read, so no id is dropped")


def _column(table: pa.Table, uri: str, column: str | None) -> list[str]:
    if column is None:
        column = DEFAULT_COLUMN if DEFAULT_COLUMN in table.column_names or table.num_columns != 1 \
            else table.column_names[0]
    if column not in table.column_names:
        raise DataError(f"sample id list {uri} has no column {column!r} (columns: {', '.join(table.column_names)}); "
                        f"name the right one with --id-column")
    values = table.column(column).cast(pa.string()).to_pylist()
    return [value.strip() for value in values if value is not None and value.strip()]


@dataclass(frozen=True)
class IdCheck:
    """A list checked against an index: the distinct training ids it names, and what it names besides."""

    train: tuple[str, ...]  # distinct, sorted
    unknown: tuple[str, ...]  # not in the dataset at all
    not_train: tuple[str, ...]  # in val/test: never trained on, so there is nothing to unlearn
    duplicates: int  # lines naming an id already named

    @property
    def missing(self) -> tuple[str, ...]:
        return self.unknown + self.not_train

    def problem(self, source: str) -> str | None:
        """One message naming every id that is not a training sample, or None."""
        parts = []
        if self.unknown:
            parts.append(f"{len(self.unknown)} unknown sample id(s): {_shown(self.unknown)}")
        if self.not_train:
            parts.append(f"{len(self.not_train)} id(s) outside the train split (only trained samples can be "
                         f"unlearned): {_shown(self.not_train)}")
        return f"{source} names " + "; and ".join(parts) if parts else None


def _shown(ids: tuple[str, ...], limit: int = 20) -> str:
    return ", ".join(ids[:limit]) + (f" ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def check_training_ids(index: pa.Table, requested: list[str]) -> IdCheck:
    """Sort `requested` into training ids, unknown ids and ids of other splits, against the index columns."""
    distinct, first = np.unique(np.asarray(requested, dtype=str), return_index=True)
    ids = index.column("sample_id").to_numpy(zero_copy_only=False).astype(str)
    split = index.column("split").to_numpy(zero_copy_only=False)
    order = np.argsort(ids)
    sorted_ids = ids[order]
    at = np.searchsorted(sorted_ids, distinct)
    found = (at < len(sorted_ids)) & (sorted_ids[np.minimum(at, len(sorted_ids) - 1)] == distinct)
    is_train = np.zeros(len(distinct), dtype=bool)
    is_train[found] = split[order[at[found]]] == "train"

    def in_file_order(mask):
        return tuple(distinct[mask][np.argsort(first[mask])].tolist())

    return IdCheck(train=tuple(distinct[is_train].tolist()), unknown=in_file_order(~found),
                   not_train=in_file_order(found & ~is_train), duplicates=len(requested) - len(distinct))
