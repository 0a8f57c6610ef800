"""Storage safety: records on S3 are created race-free, and credentials never reach a file or a log."""

import os
import threading

import pytest

from pipeline import storage
from pipeline.errors import DataError
from pipeline.results.records import RecordExistsError, ResultRecord, append_record, load_records


def _record(run_id: str, acc_test: float) -> ResultRecord:
    return ResultRecord(run_id=run_id, kind="unlearn", method="lotus", dataset="digits-hard", model="cnn", seed=0,
                        forget_spec="random:0.1", metrics={"acc_test": acc_test})


@pytest.fixture
def bucket(s3_server):
    import boto3

    name = f"safety-{os.getpid()}-{threading.get_ident() % 10000}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


def test_an_s3_object_is_created_only_where_none_exists(bucket):
    uri = f"{bucket}/once.json"
    assert storage.create_s3_object(uri, b"first") is True
    assert storage.create_s3_object(uri, b"second") is False
    assert storage.read_bytes(uri) == b"first"


def test_two_writers_racing_for_one_s3_record_leave_exactly_one_intact(bucket):
    run = f"{bucket}/run"
    outcomes, start = [], threading.Barrier(4)

    def write(value: float) -> None:
        start.wait()
        try:
            append_record(run, _record("unlearn-lotus-s0-race", value), update_parquet=False)
            outcomes.append(("won", value))
        except RecordExistsError:
            outcomes.append(("refused", value))

    threads = [threading.Thread(target=write, args=(value,)) for value in (0.1, 0.2, 0.3, 0.4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [value for outcome, value in outcomes if outcome == "won"]
    assert len(winners) == 1 and len(outcomes) == 4
    (stored,) = load_records(run)
    assert stored.metrics["acc_test"] == winners[0]  # the winner's bytes, not a mix or a later overwrite


def test_a_missing_bucket_is_a_clear_error_for_the_conditional_put(s3_server):
    with pytest.raises(DataError, match="the bucket does not exist"):
        storage.create_s3_object("s3://no-such-bucket-here/x.json", b"{}")
