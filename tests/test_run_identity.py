"""Run identity (pipeline/runs/identity.py): a rerun goes on only with the same run. A finished identical run returns
its record, other settings are refused (naming what differs) before Ray starts, an unfinished run goes on only with
its worker count, a diverged run gives way to the corrected rerun; every rank resumes from the same epoch; a record
tells every epoch and every restart, reruns of the command included."""

import copy
import json
import threading

import pytest

from jobs import train as train_job
from jobs import unlearn as unlearn_job
from jobs.common import run_main
from pipeline.results.records import load_records
from pipeline.runs import identity
from pipeline.runs.identity import RerunRefused, begin_run, check_rerun, remember_identity
from pipeline.train.checkpoints import ATTEMPTS_DIR, event_name
from pipeline.train.runner import RESTARTS_DIR, RERUN_CAUSE, read_restarts, run_folder

IDENTITY = {"data": "/data", "seed": 1, "settings": {"lr": 0.001, "alpha": 8}}


def no_ray(monkeypatch):
    """Starting Ray fails the test: the checks under test must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")

    from pipeline.runs import train, unlearn

    monkeypatch.setattr(train, "init_ray", refuse)
    monkeypatch.setattr(unlearn, "init_ray", refuse)


@pytest.fixture(scope="module")
def digits_uri(tmp_path_factory) -> str:
    """Plain 8x8 digits, local: the cheapest data a training run can have."""
    from pipeline.data.converters import prepare

    uri = str(tmp_path_factory.mktemp("digits"))
    prepare("digits", uri, seed=0)
    return uri


# ---- every rank resumes from the same epoch ------------------------------------------------------------------------


def ranks_resume(readable: list[list[bool]], epochs: list[int]) -> list:
    """Run agreed_resume on len(readable) ranks at once (threads; an element-wise max over them as the all-reduce).
    readable[rank][i]: whether that rank reads candidate i, the checkpoint of epochs[i], or "down" (storage
    unavailable). Each rank's choice: an epoch, None (a fresh start) or the name of the error it raised."""
    from pipeline.errors import StorageUnavailableError
    from pipeline.train.loop import agreed_resume

    ranks = len(readable)
    barrier, slots, chosen = threading.Barrier(ranks), [None] * ranks, [None] * ranks

    def reduce_max(values):
        barrier.wait()
        slots[rank_of[threading.get_ident()]] = values
        barrier.wait()
        result = [max(column) for column in zip(*slots)]
        barrier.wait()
        return result

    def run(rank):
        rank_of[threading.get_ident()] = rank

        def read(index):
            if readable[rank][index] == "down":
                raise StorageUnavailableError("cannot read checkpoint: storage unavailable after 3 tries")
            if not readable[rank][index]:
                raise RuntimeError("PytorchStreamReader failed reading zip archive")  # half written
            return {"epoch": epochs[index]}

        try:
            state = agreed_resume(list(range(len(readable[rank]))), read, reduce_max)
            chosen[rank] = None if state is None else state["epoch"]
        except StorageUnavailableError as exc:
            chosen[rank] = type(exc).__name__

    rank_of = {}
    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(ranks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return chosen


def test_a_checkpoint_one_rank_cannot_read_is_skipped_by_every_rank_and_unavailable_storage_stops_them_all():
    # Rank 1 cannot read the newest checkpoint (epoch 4): before, it alone went on from epoch 3.
    assert ranks_resume([[True, True, True], [False, True, True], [True, True, True]], [4, 3, 2]) == [3, 3, 3]
    assert ranks_resume([[True, True], [True, True]], [4, 3]) == [4, 4]
    # Nothing every rank reads: all start afresh together.
    assert ranks_resume([[False, True], [True, False]], [4, 3]) == [None, None]
    # A rank that lists fewer checkpoints (a listing that differs) still takes part in every round.
    assert ranks_resume([[True, True], [True]], [4, 3]) == [4, 4]
    assert ranks_resume([[False, True], [True]], [4, 3]) == [None, None]
    # Storage that stays down on one rank: every rank stops (Ray Train restarts the group), none goes on from 3.
    down = "StorageUnavailableError"
    assert ranks_resume([[True, True], ["down", True], [True, True]], [4, 3]) == [down, down, down]


def test_ranks_that_read_different_epochs_for_the_same_candidate_do_not_take_it():
    from pipeline.train.loop import agreed_resume

    # One rank's view: it reads epoch 4 where another read epoch 3 (max 4, min 3): skipped, then both read epoch 2.
    answers = iter([[2.0], [0.0, 0.0, 4.0, -3.0], [0.0, 0.0, 2.0, -2.0]])
    state = agreed_resume(["a", "b"], lambda c: {"epoch": 4 if c == "a" else 2}, lambda values: next(answers))
    assert state == {"epoch": 2}


# ---- the identity file ---------------------------------------------------------------------------------------------


def test_an_unfinished_run_goes_on_only_with_its_worker_count(tmp_path):
    out = str(tmp_path)
    remember_identity(out, "run", IDENTITY, workers=2)
    assert check_rerun(out, "run", IDENTITY, overwrite=False, workers=2) is None  # the same count resumes
    with pytest.raises(RerunRefused) as refused:
        check_rerun(out, "run", IDENTITY, overwrite=False, workers=1)
    message = str(refused.value)
    assert "started with 2 worker(s)" in message and "going on with 1" in message
    assert "--workers 2" in message and "--overwrite" in message
    assert (tmp_path / "ray" / "run" / identity.IDENTITY_FILE).exists()  # nothing was changed
    assert check_rerun(out, "run", IDENTITY, overwrite=True, workers=1) is None
    assert not (tmp_path / "ray" / "run").exists()  # --overwrite: started afresh


def test_a_finished_run_returns_its_record_whatever_the_worker_count(tmp_path):
    out = str(tmp_path)
    remember_identity(out, "run", IDENTITY, record_id="rec-1", workers=2)
    assert check_rerun(out, "run", IDENTITY, overwrite=False, workers=1) == "rec-1"
    with pytest.raises(RerunRefused, match=r"settings.alpha: 8 there, 2 now"):
        check_rerun(out, "run", {**IDENTITY, "settings": {"lr": 0.001, "alpha": 2}}, overwrite=False, workers=2)


def test_a_diverged_run_gives_way_to_a_rerun_with_other_settings(tmp_path, capsys):
    out = str(tmp_path)
    remember_identity(out, "run", IDENTITY, workers=1)
    identity.mark_diverged(out, "run")
    (tmp_path / "ray" / "run" / "checkpoint_x").mkdir()
    assert check_rerun(out, "run", IDENTITY, overwrite=False, workers=1) is None  # the same: resumes, kept
    assert (tmp_path / "ray" / "run" / "checkpoint_x").exists()
    lower = {**IDENTITY, "settings": {"lr": 0.0001, "alpha": 8}}
    assert check_rerun(out, "run", lower, overwrite=False, workers=1) is None
    line = capsys.readouterr().out.strip()
    assert line == (f"run 'run' under {out} diverged with other settings (settings.lr: 0.001 there, 0.0001 now): "
                    "deleting it and starting afresh")
    assert not (tmp_path / "ray" / "run").exists()


def test_a_divergence_marks_the_run_and_other_errors_do_not(tmp_path):
    from pipeline.errors import DivergedError, UnlearnError

    out = str(tmp_path)
    remember_identity(out, "run", IDENTITY, workers=1)
    with pytest.raises(UnlearnError):
        with identity.marking_divergence(out, "run"):
            raise UnlearnError("Ray Train run 'run' failed: a worker died")
    assert identity.STATUS not in identity.stored_identity(out, "run")
    with pytest.raises(UnlearnError):  # as it reaches the driver: Ray Train's text around the worker's error
        with identity.marking_divergence(out, "run"):
            raise UnlearnError("Ray Train run 'run' failed: pipeline.errors.DivergedError: lotus diverged in epoch 1")
    assert identity.stored_identity(out, "run")[identity.STATUS] == identity.DIVERGED
    assert identity.is_diverged(DivergedError("x"))


def test_a_rerun_that_goes_on_from_an_unfinished_run_is_noted_and_told_with_its_epoch(tmp_path):
    out = str(tmp_path)
    folder = run_folder(out, "run")
    assert begin_run(out, "run", IDENTITY, overwrite=False, workers=1) is None  # a fresh start: nothing to tell
    assert not (tmp_path / "ray" / "run" / RESTARTS_DIR).exists()
    assert begin_run(out, "run", IDENTITY, overwrite=False, workers=1) is None
    assert read_restarts(out, "run") == []  # no worker started after the note (yet): nothing went on
    from pipeline.train.checkpoints import note_attempt

    note_attempt(folder, 1)  # the workers of the rerun went on after epoch 1
    (restart,) = read_restarts(out, "run")
    assert restart["cause"] == RERUN_CAUSE and restart["resumed_after_epoch"] == 1
    assert begin_run(out, "run", IDENTITY, overwrite=True, workers=3) is None  # another count, --overwrite: afresh
    assert read_restarts(out, "run") == []


def test_the_restart_story_merges_failures_reruns_and_attempts_in_time_order(tmp_path):
    import datetime as dt

    folder = tmp_path / "ray" / "run"
    start = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)

    def write(second: int, directory: str, entry: dict):
        (folder / directory).mkdir(parents=True, exist_ok=True)
        (folder / directory / event_name(start + dt.timedelta(seconds=second))).write_text(json.dumps(entry))

    def failure(second, guess):
        write(second, RESTARTS_DIR, {"time": str(second), "cause": "ActorDiedError", "resumed_after_epoch": guess})

    def attempt(second, epoch):
        write(second, ATTEMPTS_DIR, {"time": str(second), "resumed_after_epoch": epoch})

    def rerun(second):
        write(second, RESTARTS_DIR, {"time": str(second), "cause": RERUN_CAUSE, "resumed_after_epoch": None})

    attempt(1, None)
    failure(2, 0)  # the controller had epoch 0 registered; the workers found epoch 1 on disk
    attempt(3, 1)
    failure(4, 2)  # max failures reached: the command ended
    rerun(5)  # a rerun whose Ray never started its workers
    rerun(6)
    failure(7, None)  # its first attempt died before it wrote its attempt entry
    attempt(8, 3)
    story = [(r["time"], r["cause"], r["resumed_after_epoch"]) for r in read_restarts(str(tmp_path), "run")]
    assert story == [("2", "ActorDiedError", 1), ("4", "ActorDiedError", 2), ("6", RERUN_CAUSE, 3),
                     ("7", "ActorDiedError", 3)]


def test_an_epoch_checkpoint_carries_the_history_of_every_epoch_before_it(tmp_path):
    from pipeline.models import build_model
    from pipeline.train.checkpoints import read_resume_state, write_epoch_checkpoint
    from tests.conftest import model_spec

    history = [{"epoch": 0, "loss": 1.5, "tau": 2.0, "phase": "impair"}, {"epoch": 1, "loss": 0.5, "masked": 7}]
    write_epoch_checkpoint(str(tmp_path), build_model(model_spec()), model_spec(), 1, None, [], history)
    assert read_resume_state(str(tmp_path))["history"] == history


# ---- refusals before Ray starts --------------------------------------------------------------------------------------


def train_argv(data: str, out, *extra) -> list[str]:
    return ["--data", data, "--out", str(out), "--retain-only", "--epochs", "1", "--batch-size", "512",
            "--max-failures", "0", *extra]


def test_unlearn_train_refuses_another_worker_count_or_forget_set_before_ray_starts(digits_uri, tmp_path, capsys,
                                                                                   monkeypatch):
    from pipeline.runs.train import FIT_NAME, training_recipe

    no_ray(monkeypatch)
    out = tmp_path / "gold"
    spec = train_job.train_spec(train_job.parser().parse_args(train_argv(digits_uri, out)))
    remember_identity(str(out), FIT_NAME, spec.identity(training_recipe(spec.recipe), 8), workers=1)  # unfinished

    assert run_main(train_job.main, train_argv(digits_uri, out, "--workers", "2")) == 2
    error = capsys.readouterr().err
    assert "started with 1 worker(s): going on with 2" in error and "rerun with --workers 1" in error
    assert run_main(train_job.main, train_argv(digits_uri, out, "--forget", "class:3")) == 2
    error = capsys.readouterr().err
    assert "forget: random:0.1 there, class:3 now" in error and "--overwrite" in error
    assert not (out / "ray" / FIT_NAME / RESTARTS_DIR).exists()  # refused: no rerun was noted


def test_unlearn_run_refuses_another_worker_count_before_ray_starts(digits_uri, tmp_path, capsys, monkeypatch):
    from pipeline.models import ModelSpec, build_model, save_checkpoint
    from pipeline.runs.unlearn import method_settings

    no_ray(monkeypatch)
    model = ModelSpec(name="cnn", num_classes=10, channels=1, image_size=8)
    original = str(tmp_path / "original.pt")
    save_checkpoint(build_model(model), model, original)
    argv = ["--data", digits_uri, "--original", original, "--method", "finetune", "--out", str(tmp_path / "run")]
    spec = unlearn_job.run_spec(unlearn_job.parser().parse_args(argv))
    remember_identity(spec.out, "finetune-s3407", spec.identity(method_settings("finetune"), "cnn"), workers=2)
    assert run_main(unlearn_job.main, [*argv, "--workers", "3"]) == 2
    assert "started with 2 worker(s): going on with 3" in capsys.readouterr().err


def test_the_bench_refuses_a_models_folder_whose_training_run_has_other_settings(digits_uri, tmp_path, monkeypatch):
    """made.json missing (a bench that crashed): the folder's own training run is checked, with the bench's advice."""
    from jobs import bench
    from pipeline.errors import ConfigError
    from pipeline.runs.train import FIT_NAME, training_recipe

    no_ray(monkeypatch)
    config = copy.deepcopy(bench.DEFAULTS)
    folder = tmp_path / "models" / "gold-s3407"
    other = bench.train_spec(config, digits_uri, str(folder), 3407, retain_only=True)
    other = type(other)(**{**other.__dict__, "forget": "class:3"})
    remember_identity(str(folder), FIT_NAME, other.identity(training_recipe(other.recipe), 8), workers=1)
    with pytest.raises(ConfigError, match=r"forget: class:3 there, random:0.1 now.*point `models` elsewhere"):
        bench.ensure_gold(config, digits_uri, str(tmp_path / "models"), 3407)


# ---- through Ray: one diverged and one real training run -------------------------------------------------------------


def test_a_diverged_training_run_gives_way_to_the_corrected_rerun_and_a_finished_one_is_not_run_again(
        ray_session, digits_uri, tmp_path, capsys, monkeypatch):
    from jobs import bench
    from pipeline.runs.train import FIT_NAME

    out = tmp_path / "models" / "gold-s3407"  # where a bench keeps the gold model of seed 3407
    assert run_main(train_job.main, train_argv(digits_uri, out, "--lr", "1e12")) == 2
    assert "retrain diverged in epoch 1" in capsys.readouterr().err
    assert identity.stored_identity(str(out), FIT_NAME)[identity.STATUS] == identity.DIVERGED

    # The error's advice, followed: a lower lr. Before, this was refused as "other settings".
    assert run_main(train_job.main, train_argv(digits_uri, out, "--lr", "1e-3")) == 0
    assert (f"diverged with other settings (recipe.lr: 1000000000000.0 there, 0.001 now): deleting it and starting "
            "afresh") in capsys.readouterr().out
    (record,) = load_records(str(out))
    assert record.status == "ok" and record.config["epochs_run"] == 1 and len(record.config["history"]) == 1

    no_ray(monkeypatch)  # from here on nothing may start Ray
    for extra in ([], ["--workers", "2"]):  # identical and finished: its record, whatever the worker count
        assert run_main(train_job.main, train_argv(digits_uri, out, "--lr", "1e-3", *extra)) == 0
        assert "is complete" in capsys.readouterr().out and len(load_records(str(out))) == 1
    assert run_main(train_job.main, train_argv(digits_uri, out, "--lr", "1e-3", "--seed", "13")) == 2
    assert "seed: 3407 there, 13 now" in capsys.readouterr().err and len(load_records(str(out))) == 1

    # A bench that stopped before made.json takes the finished gold model as it is, its time from an earlier run.
    config = copy.deepcopy(bench.DEFAULTS)
    config["train"] = {"epochs": 1, "batch_size": 512, "lr": "1e-3"}
    gold, info = bench.ensure_gold(config, digits_uri, str(tmp_path / "models"), 3407)
    assert gold == str(out / "model.pt") and info["reused"] and info["epochs_run"] == 1
    assert (out / "made.json").exists() and len(load_records(str(out))) == 1
