"""Storage that fails for a while does not end a run; storage that is wrong still does, at once.

Every S3 request here goes through tests/faulty_s3_proxy.py on 127.0.0.1, in front of the session's moto
server: it resets connections, loses the answers of requests the server carried out, answers 503 SlowDown and
500 InternalError, and stalls, for a fixed, seeded share of requests.
"""

import os
import subprocess
import sys
import threading
import time

import pytest

from pipeline import storage
from pipeline.errors import DataError, StorageUnavailableError, UnlearnError
from tests.conftest import FORGET_SPEC, ROOT, SEED
from tests.faulty_s3_proxy import FaultyS3Proxy

RETRIED_KINDS = ("drop", "cut", "slowdown", "internal")


@pytest.fixture(scope="module")
def proxy(s3_server):
    with FaultyS3Proxy(s3_server, seed=11, stall_s=1.0) as running:  # stalls below the SDK's 3 s timeout
        yield running


@pytest.fixture
def via_proxy(proxy, monkeypatch, s3_bucket):
    """This process's S3 calls go through the proxy, with no faults until a test configures some."""
    monkeypatch.setenv(storage.ENDPOINT_ENV, proxy.endpoint)
    proxy.configure(seed=11)
    return f"s3://{s3_bucket}"


def _every_storage_call(base: str) -> dict:
    """Write, read, look up and list a few objects the ways the pipeline does; what each call returned."""
    payloads = {f"{base}/obj-{i}.bin": bytes([i]) * (1000 + 997 * i) for i in range(4)}
    for uri, data in payloads.items():
        storage.write_bytes(uri, data)
    created = storage.create_once(f"{base}/record.json", b'{"run": 1}')
    return {"read": {uri: storage.read_bytes(uri) == data for uri, data in payloads.items()},
            "exists": [storage.exists(uri) for uri in payloads], "listed": storage.list_files(base, ".bin"),
            "created": created, "record": storage.read_bytes(f"{base}/record.json")}


@pytest.mark.parametrize("kind", RETRIED_KINDS)
def test_each_transient_fault_is_retried_where_it_happened(proxy, via_proxy, kind):
    proxy.configure(seed=3, **{kind: 0.35})
    outcome = _every_storage_call(f"{via_proxy}/{kind}")
    assert proxy.injected[kind] >= 3, proxy.log  # the faults did happen, and every call still did its work
    assert all(outcome["read"].values()) and all(outcome["exists"])
    assert outcome["listed"] == sorted(outcome["read"])
    assert outcome["created"] is True and outcome["record"] == b'{"run": 1}'


def test_a_stall_past_the_sdk_timeout_is_retried(proxy, via_proxy):
    """The AWS SDK in pyarrow gives up on a request with no byte for 3 s (curl's low-speed limit on Linux; pyarrow's
    request_timeout does not apply there), then retries it."""
    storage.write_bytes(f"{via_proxy}/slow.bin", b"patience")
    proxy.stall_s = 4.0
    proxy.configure(seed=0)
    proxy.script(["stall"])
    try:
        started = time.monotonic()
        assert storage.read_bytes(f"{via_proxy}/slow.bin") == b"patience"
    finally:
        proxy.stall_s = 1.0
    assert proxy.injected["stall"] == 1 and 3 <= time.monotonic() - started < 30


def test_a_throttled_read_of_a_small_object_is_tried_again_where_the_sdk_gives_up(proxy, via_proxy):
    """Measured: a 503 to the GET of an object smaller than the error's own body makes the AWS SDK in pyarrow fail
    with INTERNAL_FAILURE "Failed to flush response stream", without a retry of its own; storage tries again."""
    uri = f"{via_proxy}/records/tiny.json"
    storage.write_bytes(uri, b"{}")
    fs, path = storage.resolve(uri)
    proxy.configure(seed=0)
    proxy.script([None, "slowdown"])  # the HEAD goes through, the GET is throttled
    with pytest.raises(OSError, match="INTERNAL_FAILURE during GetObject operation: Failed to flush response"):
        fs.open_input_stream(path).read()
    assert proxy.requests == 2  # the SDK gave up at once
    proxy.configure(seed=0)
    proxy.script([None, "slowdown"])
    assert storage.read_bytes(uri) == b"{}"
    assert [fault for _, _, fault in proxy.log] == [None, "slowdown", None, None]  # tried again: HEAD, GET


def test_a_conditional_put_whose_answer_was_lost_is_still_its_own(proxy, via_proxy):
    """The server stored the object, the answer never arrived, botocore retried and met a 412: that object is this
    write's own. A record must not be refused as a duplicate of itself, nor a real duplicate accepted."""
    uri = f"{via_proxy}/records/run-1.json"
    proxy.script(["cut"])
    assert storage.create_s3_object(uri, b"mine") is True
    assert [fault for _, _, fault in proxy.log] == ["cut", None, None]  # the PUT, its retry, the read-back
    assert storage.read_bytes(uri) == b"mine"
    proxy.script(["cut"])
    assert storage.create_s3_object(uri, b"another writer's") is False  # retried too, but the bytes differ
    assert storage.create_s3_object(uri, b"mine") is False  # no retry: someone else's (or an earlier run's) object


def _fails_at_once(call, match: str, proxy) -> None:
    started = time.monotonic()
    with pytest.raises(DataError, match=match):
        call()
    assert proxy.requests == 1 and time.monotonic() - started < 1.0, proxy.log  # one request, no backoff


def test_deterministic_errors_fail_at_once_without_a_retry(proxy, via_proxy):
    _fails_at_once(lambda: storage.read_bytes(f"{via_proxy}/no-such-key"), "not found: s3://", proxy)
    proxy.configure(seed=0)
    _fails_at_once(lambda: storage.ensure_bucket("s3://no-such-bucket-anywhere/x"), "bucket .* does not exist", proxy)
    proxy.configure(seed=0)
    proxy.script(["denied"])
    _fails_at_once(lambda: storage.exists(f"{via_proxy}/x"), "access denied", proxy)
    proxy.configure(seed=0)
    storage.write_bytes(f"{via_proxy}/part-00000.parquet", b"PAR1 but no Parquet at all")
    proxy.configure(seed=0)
    from pipeline.data.shards import open_shard

    with pytest.raises(DataError, match="cannot read shard .*part-00000.parquet"):
        open_shard(f"{via_proxy}/part-00000.parquet")
    assert proxy.injected == {} and proxy.requests <= 3  # the file's size, its footer: read once each


def test_storage_that_stays_down_raises_an_error_ray_train_retries(proxy, via_proxy, monkeypatch, capsys):
    """After the SDK's attempts, StorageUnavailableError: not a project error, so the Train controller lets
    --max-failures restart the workers; the CLI prints one line and exits 75 (try again later)."""
    from jobs import prepare as prepare_job
    from jobs.common import run_main
    from pipeline.train.runner import PROJECT_ERROR, _restart_log_class, fit_failure, read_restarts

    storage.write_bytes(f"{via_proxy}/kept.bin", b"x")
    monkeypatch.setenv(storage.ATTEMPTS_ENV, "2")
    proxy.configure(seed=0)  # count from here
    proxy.outage(3600)
    try:
        with pytest.raises(StorageUnavailableError) as raised:
            storage.read_bytes(f"{via_proxy}/kept.bin")
        assert proxy.requests == storage.CALL_TRIES * 2 and not isinstance(raised.value, UnlearnError)
        assert str(raised.value).startswith(f"cannot read {via_proxy}/kept.bin: storage unavailable after 3 tries "
                                            "of 2 attempts each: ") and "NETWORK_CONNECTION" in str(raised.value)
        code = run_main(prepare_job.main, ["--source", "digits", "--out", f"{via_proxy}/digits"])
    finally:
        proxy.outage(0)
    error = capsys.readouterr().err
    assert code == 75 and error.startswith(f"error: cannot reach {via_proxy}/digits: storage unavailable after 3 "
                                           "tries of 2 attempts each: ") and len(error.strip().splitlines()) == 1, error

    cause = f"pipeline.errors.StorageUnavailableError: {raised.value}"
    assert not PROJECT_ERROR.search(cause)
    log = _restart_log_class()(f"{via_proxy}/run/ray/r")  # the controller's callback, as Ray Train calls it:
    log.after_exception(None, {0: raised.value})  # with the worker's own exception
    (restart,) = read_restarts(f"{via_proxy}/run", "r")
    assert cause.startswith(restart["cause"]) and len(restart["cause"]) > 100  # logged for a restart, named
    final = fit_failure("r", RuntimeError(f"Worker group failed\n{cause}"))  # after the last restart allowed
    assert isinstance(final, StorageUnavailableError) and str(final) == f"Ray Train run 'r' failed: {cause}"


@pytest.mark.parametrize("text, transient", [
    ("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 56, Failure when receiving data", True),
    ("AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 28, Timeout was reached", True),
    ("AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Could not connect to server", True),
    ("AWS Error SLOW_DOWN during ListObjectsV2 operation: Please reduce your request rate.", True),
    ("AWS Error UNKNOWN (HTTP status 503) during HeadObject operation: No response body.", True),
    ("AWS Error INTERNAL_FAILURE during ListObjectsV2 operation: We encountered an internal error.", True),
    ("AWS Error ACCESS_DENIED during HeadObject operation: No response body.", False),
    ("AWS Error NO_SUCH_BUCKET during ListObjectsV2 operation: The specified bucket does not exist", False),
    ("Path does not exist 'bucket/key'", False),
])
def test_which_sdk_errors_count_as_transient(text, transient):
    assert storage.is_transient(OSError(text)) is transient


# ---- the real commands through the proxy, each against the same command without faults ----------------------------

# 13 % of requests: resets, lost answers, throttling, 500s, and 1 s stalls (a delay below the SDK's 3 s timeout).
FAULTS = {"drop": 0.03, "cut": 0.03, "slowdown": 0.03, "internal": 0.02, "stall": 0.02}
SHARD_MB = 0.2  # digits-hard in several shards: more requests, several read units per set


def inject_faults(proxy, seed: int) -> None:
    """One fault of each kind first (so every kind surely happens), then the seeded 13 %."""
    proxy.configure(seed=seed, **FAULTS)
    proxy.script(list(FAULTS))


def faults_on_shard_reads(proxy) -> int:
    return sum(1 for method, path, fault in proxy.log if fault and method == "GET" and ".parquet" in path)


def unlearn_command(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The `unlearn` CLI in a process of its own: its own Ray, which inherits the proxy's endpoint from
    --s3-endpoint (the session's Ray, if any, talks to moto directly)."""
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    run = subprocess.run([sys.executable, "-m", "jobs.cli", *argv], cwd=ROOT, env={**environment, **(env or {})},
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return run


@pytest.fixture(scope="module")
def faulty_bucket(s3_server) -> str:
    import boto3

    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket="faulty-storage")
    return "s3://faulty-storage"


@pytest.fixture(scope="module")
def prepared_through_faults(proxy, faulty_bucket, tmp_path_factory):
    """digits-hard prepared onto S3 through faults (two worker processes), and the same conversion, fault-free,
    into a local folder."""
    from pipeline.data.converters import prepare
    from pipeline.data.shards import read_meta

    reference = prepare("digits-hard", str(tmp_path_factory.mktemp("clean-digits")), seed=0,
                        shard_bytes=int(SHARD_MB * 1024**2), procs=1)
    uri = f"{faulty_bucket}/digits-hard"
    inject_faults(proxy, seed=5)
    unlearn_command("prepare", "--source", "digits-hard", "--seed", "0", "--out", uri, "--shard-mb", str(SHARD_MB),
                    "--procs", "2", "--s3-endpoint", proxy.endpoint)
    injected = dict(proxy.injected)
    return {"uri": uri, "meta": read_meta(uri), "reference": reference, "injected": injected,
            "requests": proxy.requests}


def test_prepare_to_s3_through_faults_writes_the_same_shards(prepared_through_faults):
    prepared = prepared_through_faults
    assert set(prepared["injected"]) == set(FAULTS) and sum(prepared["injected"].values()) >= 8, prepared
    meta, reference = prepared["meta"], prepared["reference"]
    assert len(reference.shards) >= 3
    assert meta.shards == reference.shards  # file names, rows and sha256 of every shard
    assert meta.counts == reference.counts
    assert {key: value for key, value in meta.extra.items() if key != "created_unix"} == \
        {key: value for key, value in reference.extra.items() if key != "created_unix"}
    from pipeline.data.shards import verify_checksums

    verify_checksums(prepared["uri"], meta)  # what is on S3 is what _meta.json says


def _stream_run(proxy, data: str, out, original: str, env: dict | None = None):
    """A 2-worker streamed LoTUS run that reads its shards on every pass (--cache-mb 0); its one record."""
    from pipeline.results.records import load_records

    unlearn_command("run", "--data", data, "--s3-endpoint", proxy.endpoint, "--original", original,
                    "--method", "lotus", "--forget", FORGET_SPEC, "--seed", str(SEED), "--workers", "2",
                    "--data-mode", "stream", "--cache-mb", "0", "--set", "lotus.epochs=2", "--floor-draws", "0",
                    "--max-failures", "4", "--out", str(out), env=env)
    (record,) = load_records(str(out))
    return record


def _burst_after_first_checkpoint(proxy, folder, burst: int, done: threading.Event) -> None:
    """Reset the next `burst` requests as soon as the run's first epoch checkpoint is on disk: S3 down for a while,
    in the middle of the run, longer than the SDK's attempts and the storage layer's tries."""
    while not done.is_set():
        if list(folder.glob("checkpoint_*")):
            proxy.script(["drop"] * burst)
            return
        time.sleep(0.05)


@pytest.fixture(scope="module")
def runs_with_and_without_faults(proxy, prepared_through_faults, original_checkpoint, tmp_path_factory):
    data = prepared_through_faults["uri"]
    proxy.configure(seed=0)
    clean = _stream_run(proxy, data, tmp_path_factory.mktemp("clean-run"), original_checkpoint)
    clean_requests = proxy.requests

    out = tmp_path_factory.mktemp("faulty-run")
    inject_faults(proxy, seed=6)
    # 3 attempts per request and 3 tries per call: a burst of 40 resets outlasts them for up to 4 concurrent reads.
    done = threading.Event()
    watcher = threading.Thread(target=_burst_after_first_checkpoint,
                               args=(proxy, out / "ray" / f"lotus-s{SEED}", 40, done), daemon=True)
    watcher.start()
    try:
        faulty = _stream_run(proxy, data, out, original_checkpoint, env={storage.ATTEMPTS_ENV: "3"})
    finally:
        done.set()
        watcher.join()
    return {"clean": clean, "faulty": faulty, "clean_requests": clean_requests, "injected": dict(proxy.injected),
            "on_shard_reads": faults_on_shard_reads(proxy)}


def test_a_streamed_run_through_faults_and_an_outage_ends_as_one_without_them(runs_with_and_without_faults):
    """Sporadic faults are retried at the read; the outage outlasts the retries, so the workers fail with
    StorageUnavailableError and Ray Train restarts them from the epoch checkpoint: the same model and metrics."""
    runs = runs_with_and_without_faults
    clean, faulty = runs["clean"], runs["faulty"]
    assert runs["clean_requests"] > 50 and runs["on_shard_reads"] >= 5, runs  # through the proxy, faults and all
    assert clean.config["restarts"] == []
    assert faulty.config["restarts"], "the outage should have cost a restart"
    assert all("StorageUnavailableError" in restart["cause"] for restart in faulty.config["restarts"])
    assert faulty.config["restarts"][0]["resumed_after_epoch"] == 0
    assert faulty.metrics == clean.metrics
    assert faulty.checkpoint_sha256 == clean.checkpoint_sha256 and faulty.config["history"] == clean.config["history"]


def _sweep(proxy, data: str, out, original: str) -> list[dict]:
    """A 2-trial LoTUS sweep (one epoch per trial, one worker); its trials, by learning rate. Its data mode is the
    default (memory for digits): each trial's driver reads the shards from S3. (tests/test_sweep.py runs its sweep in
    stream mode, where a trial's Train worker once waited forever on its data warm-up.)"""
    unlearn_command("sweep", "--data", data, "--s3-endpoint", proxy.endpoint, "--original", original,
                    "--methods", "lotus", "--forget", FORGET_SPEC, "--seed", str(SEED), "--trials", "2",
                    "--search", "grid", "--scheduler", "fifo", "--space", "lotus.lr=grid:1e-4,3e-5",
                    "--set", "lotus.epochs=1", "--set", "lotus.alpha=8", "--max-concurrent", "1",
                    "--max-failures", "0", "--out", str(out))
    import pandas as pd

    table = pd.read_parquet(out / "trials.parquet").sort_values("lr")
    return table[["lr", "status", "feasible", "rf_jsd", "acc_forget", "acc_retain", "acc_test"]].to_dict("records")


def test_a_sweep_through_faults_gives_the_same_trials(proxy, prepared_through_faults, original_checkpoint,
                                                      tmp_path_factory):
    """With --max-failures 0 any failure would end a trial: the retries at the read absorb every fault."""
    data = prepared_through_faults["uri"]
    proxy.configure(seed=0)
    clean = _sweep(proxy, data, tmp_path_factory.mktemp("clean-sweep"), original_checkpoint)
    inject_faults(proxy, seed=7)
    faulty = _sweep(proxy, data, tmp_path_factory.mktemp("faulty-sweep"), original_checkpoint)
    assert faults_on_shard_reads(proxy) >= 5, proxy.injected
    assert [trial["status"] for trial in faulty] == ["finished", "finished"]
    assert faulty == clean
