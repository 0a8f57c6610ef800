"""`unlearn prepare` at scale: shards built in parallel, and a stopped conversion resumed to the same result."""

import json
import os
import re

import pytest

from pipeline import storage
from pipeline.data import prepare as prepare_module
from pipeline.data.converters import SyntheticSpec, prepare
from pipeline.data.shards import META_FILE, read_index, read_meta, verify_checksums
from pipeline.errors import DataError

# 36 tiny JPEGs (~700 B each) in shards of ~4 KB: about seven shards, a conversion in well under a second.
SPEC = SyntheticSpec(classes=3, size=16, train_per_class=8, val_per_class=2, test_per_class=2)
SHARD_BYTES = 4000


def _prepare(out, seed=5, **kwargs):
    kwargs.setdefault("procs", 1)
    return prepare("synthetic", out, seed=seed, synthetic=SPEC, shard_bytes=SHARD_BYTES, **kwargs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted conversion: what every resumed one must equal."""
    out = str(tmp_path_factory.mktemp("reference"))
    meta = _prepare(out)
    assert len(meta.shards) >= 4
    return meta


class CountingBuilds:
    """Wraps prepare's in-process shard builder: counts the builds, and stops the run (Ctrl-C) at one of them."""

    def __init__(self, monkeypatch, stop_at=None):
        self.built, self.stop_at, self.real = [], stop_at, prepare_module.build_shard
        monkeypatch.setattr(prepare_module, "build_shard", self)

    def __call__(self, source, out, index, *args, **kwargs):
        if self.stop_at is not None and len(self.built) == self.stop_at:
            raise KeyboardInterrupt
        self.built.append(index)
        return self.real(source, out, index, *args, **kwargs)


def _interrupted(out, monkeypatch, after_shards=2, **kwargs):
    builds = CountingBuilds(monkeypatch, stop_at=after_shards)
    with pytest.raises(KeyboardInterrupt):
        _prepare(out, **kwargs)
    monkeypatch.undo()
    assert not storage.exists(storage.join(out, META_FILE))  # unfinished: no dataset yet
    return builds.built


def _assert_same_dataset(out, meta, reference):
    assert meta.shards == reference.shards  # same files, rows and sha256
    assert read_meta(out).shards == reference.shards
    verify_checksums(out, read_meta(out))
    ids = read_index(out, meta).column("sample_id").to_pylist()  # read_index also refuses duplicates
    assert len(ids) == len(set(ids)) == sum(reference.counts.values())


def _resume_matches_uninterrupted(out, monkeypatch, reference):
    done_before = _interrupted(out, monkeypatch)
    assert done_before == [0, 1]
    stamps = {i: _modified(out, i) for i in done_before}
    builds = CountingBuilds(monkeypatch)
    meta = _prepare(out)
    assert sorted(builds.built) == list(range(2, len(reference.shards)))  # only the missing shards
    assert {i: _modified(out, i) for i in done_before} == stamps  # the finished ones were not rewritten
    _assert_same_dataset(out, meta, reference)


def _modified(out, index):
    fs, path = storage.resolve(storage.join(out, f"part-{index:05d}.parquet"))
    return fs.get_file_info(path).mtime_ns


def test_resume_writes_only_missing_shards_and_equals_an_uninterrupted_run(tmp_path, monkeypatch, reference):
    _resume_matches_uninterrupted(str(tmp_path / "ds"), monkeypatch, reference)


def test_resume_on_s3(s3_bucket, monkeypatch, reference):
    _resume_matches_uninterrupted(f"s3://{s3_bucket}/datasets/syn", monkeypatch, reference)
    monkeypatch.undo()
    pooled = f"s3://{s3_bucket}/datasets/pooled"  # worker processes reach the same (moto) endpoint
    _assert_same_dataset(pooled, _prepare(pooled, procs=2), reference)


def test_a_changed_or_unrecorded_shard_is_rewritten(tmp_path, monkeypatch, reference):
    out = str(tmp_path / "ds")
    _interrupted(out, monkeypatch, after_shards=3)
    shard = tmp_path / "ds" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")  # corrupted after it was recorded
    os.remove(tmp_path / "ds" / "_prepare" / "part-00001.json")  # written, but stopped before its record
    builds = CountingBuilds(monkeypatch)
    meta = _prepare(out)
    assert sorted(builds.built) == [0, 1] + list(range(3, len(reference.shards)))
    _assert_same_dataset(out, meta, reference)


def test_resuming_with_other_settings_is_refused(tmp_path, monkeypatch, reference):
    out = str(tmp_path / "ds")
    _interrupted(out, monkeypatch)
    with pytest.raises(DataError, match=r"other settings \(seed 5 there, 6 now[;)].*--overwrite.*another --out"):
        _prepare(out, seed=6)
    with pytest.raises(DataError, match=r"rows per shard \(--shard-mb\)"):
        prepare("synthetic", out, seed=5, synthetic=SPEC, shard_bytes=2 * SHARD_BYTES, procs=1)
    meta = _prepare(out, seed=6, overwrite=True)  # starting over: no shard of seed 5 survives
    assert meta.extra["seed"] == 6
    assert {s["sha256"] for s in meta.shards}.isdisjoint(s["sha256"] for s in reference.shards)


def test_resuming_a_run_of_the_class_by_class_order_is_refused_for_that_reason(tmp_path, monkeypatch):
    out = str(tmp_path / "ds")
    _interrupted(out, monkeypatch)
    plan_uri = storage.join(out, "_prepare", "plan.json")
    plan = json.loads(storage.read_text(plan_uri))
    del plan["row_order"]  # a plan.json of the code that stored rows class by class
    plan["rows_sha256"], plan["fingerprint"] = "0" * 64, "1" * 64
    storage.write_text(plan_uri, json.dumps(plan))
    with pytest.raises(DataError, match=r"other settings \(row order None there, 'seeded-shuffle' now\)"):
        _prepare(out)


def test_a_finished_dataset_needs_overwrite(tmp_path, monkeypatch, reference):
    out = str(tmp_path / "ds")
    _prepare(out)
    with pytest.raises(DataError, match="already holds a dataset; pass --overwrite"):
        _prepare(out)
    builds = CountingBuilds(monkeypatch)
    meta = _prepare(out, overwrite=True)
    assert builds.built == [] and meta.shards == reference.shards  # same conversion: verified shards kept


def test_process_pool_gives_the_same_shards_and_resumes_after_a_stop(tmp_path, reference):
    out = str(tmp_path / "ds")
    lines = []

    def stop_after_first_shard(line):
        lines.append(line)
        raise KeyboardInterrupt  # Ctrl-C in the parent while workers are building

    with pytest.raises(KeyboardInterrupt):
        _prepare(out, procs=2, progress=stop_after_first_shard, progress_every_s=0)
    assert not os.path.exists(os.path.join(out, META_FILE)) and len(lines) == 1
    lines.clear()
    meta = _prepare(out, procs=2, progress=lines.append, progress_every_s=0)
    _assert_same_dataset(out, meta, reference)
    assert lines[0].startswith("  resuming: ") and "shards already written and verified" in lines[0]
    assert not [name for name in os.listdir(out) if name.startswith(".tmp-")]


def test_progress_lines_show_count_rate_and_eta(tmp_path):
    lines = []
    prepare("synthetic", str(tmp_path / "ds"), seed=0, synthetic=SyntheticSpec(classes=2, size=16,
            train_per_class=300), shard_bytes=10**9, procs=1, progress=lines.append, progress_every_s=0)
    assert re.fullmatch(r"  256/620 images  [\d,]+ img/s  ETA \d+ s", lines[0])  # one line per 256-row piece
    assert re.fullmatch(r"  620 images in 1 shard\(s\): wrote 620 in [\d.]+ s, [\d,]+ img/s", lines[-1])


def test_plan_and_records_are_kept_beside_the_dataset(tmp_path, reference):
    out = tmp_path / "ds"
    _prepare(str(out))
    plan = json.loads((out / "_prepare" / "plan.json").read_text())
    assert (plan["source"], plan["seed"], plan["shards"]) == ("synthetic", 5, len(reference.shards))
    record = json.loads((out / "_prepare" / "part-00000.json").read_text())
    assert {key: record[key] for key in ("file", "rows", "sha256")} == reference.shards[0]
