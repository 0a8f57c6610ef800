"""Shard format round trips (local and S3 on moto), checksums, and clear errors for bad input."""

import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.data.converters import prepare
from pipeline.data.images import decode_one, encode
from pipeline.data.local import load_sources
from pipeline.data.shards import (CORE_COLUMNS, META_FILE, ROW_GROUP_ROWS, DatasetMeta, ShardWriter, read_index,
                                   read_meta, read_table, verify_checksums)
from pipeline.errors import DataError


def _meta(num_classes=3):
    return DatasetMeta(name="tiny", num_classes=num_classes, class_names=[str(i) for i in range(num_classes)],
                       height=4, width=4, channels=1, encoding="png")


def _write_tiny(uri, rows=10, shard_bytes=200):
    writer = ShardWriter(uri, _meta(), shard_bytes=shard_bytes)
    images = {}
    for i in range(rows):
        pixels = np.full((4, 4), i * 20, dtype=np.uint8)
        images[f"s{i}"] = pixels
        writer.add(f"s{i}", i % 3, encode(pixels), ("train", "val", "test")[i % 3])
    return writer.close(), images


def _round_trip(uri):
    meta, images = _write_tiny(uri)
    assert len(meta.shards) > 1  # small shard size: several files
    loaded = read_meta(uri)
    assert loaded.counts == {"train": 4, "val": 3, "test": 3}
    verify_checksums(uri, loaded)
    table = read_table(uri, loaded)
    assert table.num_rows == 10
    for sample_id, data in zip(table.column("sample_id").to_pylist(), table.column("image").to_pylist()):
        np.testing.assert_array_equal(decode_one(data, 1, 4, 4)[0], images[sample_id])


def test_local_round_trip_with_checksums(tmp_path):
    _round_trip(str(tmp_path / "ds"))


def test_s3_round_trip_on_moto(s3_bucket):
    _round_trip(f"s3://{s3_bucket}/datasets/tiny")
    assert storage.exists(f"s3://{s3_bucket}/datasets/tiny/{META_FILE}")


def test_missing_bucket_is_a_clear_error(s3_server):
    with pytest.raises(DataError, match="bucket .* does not exist"):
        _write_tiny("s3://no-such-bucket-here/ds")


def test_bad_credentials_are_a_clear_error(s3_bucket, monkeypatch):
    from moto import settings

    from tests.conftest import FAKE_AWS_KEY_ID, FAKE_AWS_SECRET

    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto now checks keys: the fake ones are unknown
    with pytest.raises(DataError, match="access denied|credentials") as caught:
        storage.write_text(f"s3://{s3_bucket}/x.txt", "hello")
    assert FAKE_AWS_SECRET not in str(caught.value) and FAKE_AWS_KEY_ID not in str(caught.value)  # never echoed


def test_checksum_mismatch_is_detected(tmp_path):
    uri = str(tmp_path / "ds")
    meta, _ = _write_tiny(uri)
    shard = tmp_path / "ds" / meta.shards[0]["file"]
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, 1), shard)  # a modified shard
    with pytest.raises(DataError, match="checksum mismatch.*part-00000"):
        verify_checksums(uri, read_meta(uri))


def test_existing_dataset_is_not_overwritten(tmp_path):
    uri = str(tmp_path / "ds")
    _write_tiny(uri)
    before = (tmp_path / "ds" / META_FILE).read_text()
    with pytest.raises(DataError, match="already holds a dataset"):
        _write_tiny(uri)
    assert (tmp_path / "ds" / META_FILE).read_text() == before


def test_missing_dataset_names_the_problem(tmp_path):
    with pytest.raises(DataError, match="the path does not exist"):
        read_meta(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="_meta.json is missing"):
        read_meta(str(tmp_path / "empty"))


def test_missing_column_is_named(tmp_path):
    uri = str(tmp_path / "ds")
    meta, _ = _write_tiny(uri)
    for shard in meta.shards:
        path = tmp_path / "ds" / shard["file"]
        pq.write_table(pq.read_table(path).drop(["label"]), path)
    with pytest.raises(DataError, match=r"lacks column\(s\) \['label'\]"):
        read_index(uri, read_meta(uri))


def test_label_out_of_range_is_rejected(tmp_path):
    uri = str(tmp_path / "ds")
    meta, _ = _write_tiny(uri)
    path = tmp_path / "ds" / meta.shards[0]["file"]
    table = pq.read_table(path)
    labels = pa.array([7] * table.num_rows, pa.int32())
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", labels), path)
    first_id = table.column("sample_id")[0].as_py()
    with pytest.raises(DataError, match=rf"label 7 of sample '{first_id}' in shard {meta.shards[0]['file']} .* "
                                        rf"outside 0..2 \({table.num_rows} such label"):
        read_index(uri, read_meta(uri))
    with pytest.raises(DataError, match="label 5 outside"):
        ShardWriter(str(tmp_path / "other"), _meta()).add("x", 5, b"", "train")


def test_duplicate_ids_and_bad_splits_are_rejected(tmp_path):
    writer = ShardWriter(str(tmp_path / "ds"), _meta())
    writer.add("a", 0, encode(np.zeros((4, 4), np.uint8)), "train")
    with pytest.raises(DataError, match="duplicate sample_id 'a'"):
        writer.add("a", 1, b"", "train")
    with pytest.raises(DataError, match="split must be one of"):
        writer.add("b", 1, b"", "holdout")


def _write_old_format(uri, rows):
    """A dataset as written before width/height and `resize` existed: four columns, no `resize` in _meta.json."""
    table = pa.table({"sample_id": [r[0] for r in rows], "label": pa.array([r[1] for r in rows], pa.int32()),
                      "image": [r[2] for r in rows], "split": [r[3] for r in rows]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(storage.join(uri, "part-00000.parquet"), buffer.getvalue())
    body = json.loads(_meta().to_json())
    body.pop("resize")
    body.update(counts={"train": len(rows), "val": 0, "test": 0},
                shards=[{"file": "part-00000.parquet", "rows": len(rows),
                         "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}])
    storage.write_text(storage.join(uri, META_FILE), json.dumps(body))


def test_corrupt_image_is_refused_at_write_and_named_at_read(tmp_path):
    writer = ShardWriter(str(tmp_path / "ds"), _meta())
    writer.add("good", 0, encode(np.zeros((4, 4), np.uint8)), "train")
    with pytest.raises(DataError, match="corrupt image for sample 'broken-7'"):
        writer.add("broken-7", 1, b"not an image at all", "train")
    # a shard written by something else can still hold one: decoding names it
    uri = str(tmp_path / "old")
    _write_old_format(uri, [("good", 0, encode(np.zeros((4, 4), np.uint8)), "train"),
                            ("broken-7", 1, b"not an image at all", "train")])
    with pytest.raises(DataError, match="corrupt image for sample 'broken-7'"):
        load_sources(uri)


def test_old_format_without_sizes_or_resize_still_reads(tmp_path):
    uri = str(tmp_path / "old")
    pixels = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    _write_old_format(uri, [(f"s{i}", i % 3, encode(pixels), "train") for i in range(6)])
    meta = read_meta(uri)
    assert meta.resize == "squash"  # what every dataset before `resize` was made for
    verify_checksums(uri, meta)
    assert read_table(uri, meta).column_names == CORE_COLUMNS
    assert read_index(uri, meta).num_rows == 6
    sources, _ = load_sources(uri)
    np.testing.assert_array_equal(sources["train"].images[0, 0].numpy(), pixels)
    with pytest.raises(DataError, match=r"lacks column\(s\) \['width'\]"):
        read_table(uri, meta, ["sample_id", "width"])


def test_width_and_height_come_from_each_image(tmp_path):
    uri = str(tmp_path / "ds")
    writer = ShardWriter(uri, _meta())
    shapes = {"wide": (3, 7), "tall": (9, 2), "rgb": (5, 6)}
    for sample_id, (height, width) in shapes.items():
        pixels = np.zeros((height, width, 3) if sample_id == "rgb" else (height, width), np.uint8)
        writer.add(sample_id, 0, encode(pixels, "JPEG" if sample_id == "rgb" else "PNG"), "train")
    meta = writer.close()
    table = read_table(uri, meta, ["sample_id", "width", "height"])
    assert table.schema.field("width").type == pa.int32() and table.schema.field("height").type == pa.int32()
    found = {row["sample_id"]: (row["height"], row["width"]) for row in table.to_pylist()}
    assert found == shapes


def test_row_groups_hold_at_most_256_rows(tmp_path):
    uri = str(tmp_path / "ds")
    writer = ShardWriter(uri, _meta())
    image = encode(np.zeros((4, 4), np.uint8))
    for i in range(600):
        writer.add(f"s{i}", 0, image, "train")
    meta = writer.close()
    assert len(meta.shards) == 1
    fs, path = storage.resolve(storage.join(uri, meta.shards[0]["file"]))
    metadata = pq.ParquetFile(path, filesystem=fs).metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [ROW_GROUP_ROWS] * 2 + [88]


def test_resize_round_trips_and_is_checked(tmp_path):
    meta = _meta()
    meta.resize = "shorter_side_crop"
    assert DatasetMeta.from_json(meta.to_json(), "x").resize == "shorter_side_crop"
    assert DatasetMeta.from_json(_meta().to_json(), "x").resize == "squash"
    with pytest.raises(DataError, match="resize must be one of .*'stretch'"):
        DatasetMeta(name="t", num_classes=2, class_names=["a", "b"], height=4, width=4, channels=1,
                    encoding="png", resize="stretch")
    body = json.loads(_meta().to_json())
    body["resize"] = "stretch"
    with pytest.raises(DataError, match="somewhere/_meta.json: .*resize must be one of"):
        DatasetMeta.from_json(json.dumps(body), "somewhere/_meta.json")


def test_digits_converter(tmp_path):
    meta = prepare("digits", str(tmp_path / "digits"), seed=0)
    assert meta.counts["train"] + meta.counts["val"] + meta.counts["test"] == 1797
    assert meta.num_classes == 10 and (meta.height, meta.width, meta.channels) == (8, 8, 1)
    index = read_index(str(tmp_path / "digits"), meta)
    assert index.num_rows == 1797
