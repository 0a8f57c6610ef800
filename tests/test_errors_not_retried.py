"""Errors that would recur on every retry end a Ray Train run at once, though --max-failures allows restarts: a
corrupt image met by a streaming worker, and a method that diverged. One attempt, nothing under restarts/."""

import hashlib
import shutil

import pyarrow.parquet as pq
import pytest

from jobs import unlearn
from jobs.common import run_main
from pipeline.data.images import decode_tensor
from pipeline.data.shards import META_FILE, encode_shard, read_meta
from pipeline.errors import DataError
from pipeline.train.checkpoints import ATTEMPTS_DIR
from pipeline.train.runner import RESTARTS_DIR
from tests.conftest import FORGET_SPEC, SEED

RUN = f"lotus-s{SEED}"


@pytest.fixture(scope="module")
def corrupt_digits(digits_hard_uri, tmp_path_factory) -> dict:
    """A copy of digits-hard whose first val image is cut in half (its header intact, so prepare's header check
    would have let it through), with _meta.json's sha256 updated to match: the shards verify, the image does
    not decode. LoTUS reads it at once, measuring the original model on D_u (the val split)."""
    folder = tmp_path_factory.mktemp("corrupt") / "digits-hard"
    shutil.copytree(digits_hard_uri, folder)
    meta = read_meta(str(folder))
    shard = folder / meta.shards[0]["file"]
    columns = pq.read_table(shard).to_pydict()
    row = columns["split"].index("val")
    image = columns["image"][row]
    columns["image"][row] = image[:len(image) // 2]
    data = encode_shard(columns)
    shard.write_bytes(data)
    meta.shards[0]["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / META_FILE).write_text(meta.to_json())
    sample = columns["sample_id"][row]
    with pytest.raises(DataError) as decoded:
        decode_tensor(columns["image"][row], meta.channels, sample)
    return {"uri": str(folder), "sample": sample, "decoder_says": str(decoded.value)}


def test_the_controller_ends_a_run_on_a_workers_own_diverged_or_data_error_and_logs_no_restart(tmp_path):
    """Ray Train hands the controller's callback the exception a worker raised, without its traceback: its text
    alone does not name its type (such a DivergedError used to be retried)."""
    from pipeline.errors import DivergedError, UnlearnError
    from pipeline.train.runner import _restart_log_class, read_restarts, run_folder

    log = _restart_log_class()(run_folder(str(tmp_path), "run"))
    diverged = DivergedError("lotus diverged in epoch 1: mean loss nan. Settings: lotus.lr=1000000.0. No model "
                             "was saved; lower lotus.lr (--set lotus.lr=...) and run again")
    with pytest.raises(UnlearnError) as ended:
        log.after_exception(None, {0: diverged, 1: diverged})
    assert str(ended.value) == f"pipeline.errors.DivergedError: {diverged}"  # whole, with the settings to change
    with pytest.raises(UnlearnError, match="^pipeline.errors.DataError: corrupt image for sample 'x'"):
        log.after_exception(None, {0: DataError("corrupt image for sample 'x': image file is truncated")})
    assert read_restarts(str(tmp_path), "run") == []


def _run(data: str, original: str, out, *extra: str) -> int:
    return run_main(unlearn.main, ["--data", data, "--original", original, "--method", "lotus", "--forget", FORGET_SPEC,
                                   "--seed", str(SEED), "--out", str(out), "--floor-draws", "0", *extra])


def _ended_in_its_first_attempt(out) -> None:
    folder = out / "ray" / RUN
    assert not list((folder / RESTARTS_DIR).glob("*.json")), "a restart was logged: Ray Train was let retry"
    assert len(list((folder / ATTEMPTS_DIR).glob("*.json"))) == 1, "the worker group started more than once"


def test_a_corrupt_image_in_a_streamed_run_ends_it_at_once_with_the_decoders_message(
        ray_session, corrupt_digits, original_checkpoint, tmp_path, capsys):
    code = _run(corrupt_digits["uri"], original_checkpoint, tmp_path, "--data-mode", "stream", "--max-failures", "2",
                "--set", "lotus.epochs=1")
    error = capsys.readouterr().err
    assert corrupt_digits["decoder_says"] == f"corrupt image for sample {corrupt_digits['sample']!r}: image file is " \
                                              "truncated"
    assert code == 2
    assert error.splitlines()[0] == f"error: Ray Train run {RUN!r} failed: pipeline.errors.DataError: " \
                                    f"{corrupt_digits['decoder_says']}", error
    _ended_in_its_first_attempt(tmp_path)
    assert not (tmp_path / f"{RUN}.pt").exists() and not (tmp_path / "records").exists()


def test_a_diverged_run_is_not_retried(ray_session, digits_hard_uri, original_checkpoint, tmp_path, capsys):
    code = _run(digits_hard_uri, original_checkpoint, tmp_path, "--max-failures", "2", "--set", "lotus.lr=1e6",
                "--set", "lotus.epochs=2")
    error = capsys.readouterr().err
    assert code == 2 and "lotus diverged in epoch 1" in error, error
    _ended_in_its_first_attempt(tmp_path)
