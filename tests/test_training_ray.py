"""The real Ray path: shards -> Ray Train workers -> checkpoints and resume (exactly-once reads: tests/test_ingest.py)."""

import pytest

from jobs import train
from pipeline.runs.train import train as run_training
from pipeline.data.converters import prepare
from pipeline.data.local import load_sources
from pipeline.methods.accuracy import accuracy
from pipeline.models import load_checkpoint
from tests.conftest import CPU


@pytest.fixture(scope="module")
def digits_uri(s3_server):
    """Digits shards on the local S3 server: Ray Data reads them over HTTP like a real bucket."""
    import boto3

    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket="digits-ray")
    uri = "s3://digits-ray/shards"
    prepare("digits", uri, seed=0)
    return uri


def _train(data, out, *extra):
    return run_training(train.train_spec(train.parser().parse_args(["--data", data, "--out", str(out), "--max-failures", "0",
                                                                   *extra])))


def test_small_cnn_trained_through_ray_from_s3_reaches_90_percent_and_resumes(ray_session, digits_uri, tmp_path):
    import json

    from pipeline.runs.identity import IDENTITY_FILE, RECORD
    from pipeline.train.runner import RERUN_CAUSE

    # Streamed, as large data is (Ray Data read tasks over S3, one per row group); the resumed run holds the
    # small data in memory, the default for it: both paths must feed the same training.
    first = _train(digits_uri, tmp_path / "run", "--epochs", "3", "--data-mode", "stream")
    assert first["epochs_run"] == 3 and first["restarts"] == []
    # Its three epoch checkpoints were written and reported, and timed apart from the training itself.
    assert first["epoch_report_seconds"] > 0 and first["unlearn_seconds"] > 0

    # As if the command had stopped while it wrote the last epoch's checkpoint: that one half written (Ray had
    # registered it), no record. The rerun goes on after the second epoch (the newest every worker reads).
    folder = tmp_path / "run" / "ray" / "train"
    sorted(path for path in folder.glob("checkpoint_*") if path.is_dir())[-1].joinpath("state.pt").unlink()
    spec = json.loads((folder / IDENTITY_FILE).read_text())
    spec.pop(RECORD)
    (folder / IDENTITY_FILE).write_text(json.dumps(spec))
    for record in (tmp_path / "run" / "records").iterdir():
        record.unlink()
    resumed = _train(digits_uri, tmp_path / "run", "--epochs", "3")
    assert resumed["epochs_run"] == 3 and resumed["checkpoint_sha256"] == first["checkpoint_sha256"]  # to the bit
    # The record tells the whole story: every epoch (two of them from the checkpoint) and the rerun it went on from.
    assert [entry["epoch"] for entry in resumed["history"]] == [0, 1, 2]
    assert resumed["history"] == first["history"] == resumed["record"].config["history"]
    assert [(r["cause"], r["resumed_after_epoch"]) for r in resumed["record"].config["restarts"]] == [(RERUN_CAUSE, 1)]
    model, spec, _ = load_checkpoint(str(tmp_path / "run" / "model.pt"))
    sources, _ = load_sources(digits_uri)
    assert spec.image_size == 8 and accuracy(model, sources["test"], CPU) >= 0.90
    assert resumed["evaluation"]["test"] >= 0.90
