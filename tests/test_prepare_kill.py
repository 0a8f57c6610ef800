"""`unlearn prepare` killed with SIGKILL in the middle of writing a shard, then run again, ends with the very
shards and _meta.json of an uninterrupted run: nothing of the cut write survives or is taken for a shard."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.data.converters import SyntheticSpec, prepare
from pipeline.data.shards import META_FILE
from tests.conftest import ROOT

# ImageNet-shaped JPEGs (~110 KB each) in shards of about 2 MB: a shard write long enough to be caught in.
SPEC = SyntheticSpec(classes=3, train_per_class=24, val_per_class=4, test_per_class=4)
SHARD_MB = 2.0
KILL_TRIES = 5


def _command(out: Path) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", "prepare", "--source", "synthetic-imagenet", "--seed", "4",
            "--classes", str(SPEC.classes), "--train-per-class", str(SPEC.train_per_class),
            "--val-per-class", str(SPEC.val_per_class), "--test-per-class", str(SPEC.test_per_class),
            "--shard-mb", str(SHARD_MB), "--procs", "1", "--out", str(out)]


def _temp_files(out: Path) -> list[str]:
    """Temp files of writes in progress or cut short, beside the shards (storage.write_bytes names them `.tmp-*`)."""
    return [name for name in os.listdir(out) if name.startswith(".tmp-")] if out.is_dir() else []


def _shards(out: Path) -> list[str]:
    return sorted(name for name in os.listdir(out) if name.endswith(".parquet")) if out.is_dir() else []


def _kill_inside_a_shard_write(out: Path, shard_count: int) -> bool:
    """Start the command and SIGKILL it the moment a shard's temp file appears, once a first shard is done.

    True when the kill landed inside a shard write: its temp file is left and not every shard was published.
    """
    process = subprocess.Popen(_command(out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while process.poll() is None:
            if _shards(out) and _temp_files(out):  # a shard written, the next being written (or _meta.json)
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.0005)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the command ended before a shard write was caught"
    return bool(_temp_files(out)) and len(_shards(out)) < shard_count


def test_a_prepare_killed_in_a_shard_write_resumes_to_the_uninterrupted_result(tmp_path):
    reference = prepare("synthetic-imagenet", str(tmp_path / "uninterrupted"), seed=4, synthetic=SPEC,
                        shard_bytes=int(SHARD_MB * 1024**2), procs=1)
    assert len(reference.shards) >= 3

    for attempt in range(KILL_TRIES):  # a shard write lasts milliseconds: the kill may land just outside one
        out = tmp_path / f"killed-{attempt}"
        if _kill_inside_a_shard_write(out, len(reference.shards)):
            break
    else:
        raise AssertionError(f"no kill landed inside a shard write in {KILL_TRIES} tries")
    assert not (out / META_FILE).exists()  # unfinished: not a dataset yet
    done_before = _shards(out)

    resumed = subprocess.run(_command(out), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming: {len(done_before)} of {len(reference.shards)} shards already written and verified" \
        in resumed.stdout + resumed.stderr
    assert _temp_files(out) == []  # the cut write's leftovers are gone
    for shard in reference.shards:  # byte for byte
        assert (out / shard["file"]).read_bytes() == (tmp_path / "uninterrupted" / shard["file"]).read_bytes()
    written, expected = (json.loads((folder / META_FILE).read_text()) for folder in (out, tmp_path / "uninterrupted"))
    for meta in (written, expected):
        meta["extra"].pop("created_unix")  # the one field that tells the two runs apart: when they finished
    assert written == expected and _shards(out) == _shards(tmp_path / "uninterrupted")
