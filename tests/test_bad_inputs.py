"""Bad input to `unlearn run` / `eval` / `train` is refused in the driver, before Ray starts, with one line and exit 2."""

import pytest

from jobs import evaluate, train, unlearn
from jobs.common import run_main
from tests.conftest import FORGET_SPEC, SEED


@pytest.fixture
def run_with(digits_hard_uri, original_checkpoint, tmp_path, capsys):
    """Run `unlearn run` with some flags replaced; return (exit code, stderr)."""

    def run(**replaced):
        flags = {"--data": digits_hard_uri, "--original": original_checkpoint, "--method": "lotus",
                 "--forget": FORGET_SPEC, "--seed": str(SEED), "--out": str(tmp_path / "out"), **replaced}
        argv = [item for key, value in flags.items() for item in ((key, value) if value is not None else (key,))]
        code = run_main(unlearn.main, argv)
        return code, capsys.readouterr().err

    return run


def _refused(result, text):
    code, error = result
    assert code == 2 and text in error and len(error.strip().splitlines()) == 1, error


def test_out_that_is_a_file_or_under_a_file_is_refused(run_with, tmp_path):
    existing = tmp_path / "a-file"
    existing.write_text("not a folder")
    _refused(run_with(**{"--out": str(existing)}), "is an existing file, not a folder")
    _refused(run_with(**{"--out": str(existing / "run")}), "cannot be created")


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_workers_below_one_are_refused(run_with, workers):
    _refused(run_with(**{"--workers": workers}), f"--workers must be at least 1, not {workers}")


@pytest.mark.parametrize("setting, text", [("lotus.lr=notanumber", "lotus.lr='notanumber' is not a number"),
                                           ("lotus.use_gumbel=3", "lotus.use_gumbel=3 is not true or false"),
                                           ("lotus.optimizer=7", "lotus.optimizer=7 is not str")])
def test_settings_of_the_wrong_kind_are_refused(run_with, setting, text):
    _refused(run_with(**{"--set": setting}), text)


def test_settings_that_yaml_reads_as_strings_still_pass(run_with):
    from pipeline.methods import create_method

    assert create_method("lotus", {"lr": "1e-4", "alpha": 2, "epochs": 3}, log=None).config["lr"] == "1e-4"


@pytest.mark.parametrize("content, text", [(b"these are not weights\n", "not a PyTorch checkpoint"),
                                           (b"", "the file is empty")])
def test_an_original_that_is_not_a_checkpoint_is_refused(run_with, tmp_path, content, text):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    _refused(run_with(**{"--original": str(bad)}), text)


def test_a_missing_data_path_is_named(run_with, tmp_path):
    _refused(run_with(**{"--data": str(tmp_path / "nowhere")}), "the path does not exist")


@pytest.mark.parametrize("name", ["../escape", "a/b", ".."])
def test_names_that_would_leave_out_are_refused(run_with, name):
    _refused(run_with(**{"--name": name}), "no path separators or '..'")


def test_eval_and_train_check_the_same_flags(digits_hard_uri, original_checkpoint, tmp_path, capsys):
    out = str(tmp_path / "out")
    for job, flags in ((evaluate, ["--model", original_checkpoint]), (train, [])):
        assert run_main(job.main, ["--data", digits_hard_uri, *flags, "--out", out, "--workers", "0"]) == 2
        assert "--workers must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
