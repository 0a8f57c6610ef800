"""`unlearn run` through Ray Data + Ray Train agrees with the in-process method, and leaves a full record."""

import hashlib

import pytest
import torch

from jobs import unlearn
from pipeline.runs import unlearn as runs
from pipeline.runs.spec import MethodRun
from pipeline.methods.accuracy import accuracy
from pipeline.models import load_checkpoint
from pipeline.results.records import load_records
from tests.conftest import CPU, FORGET_SPEC, SEED

METHOD, SETTINGS = "lotus", {"epochs": 3}


def in_process_on_the_ray_batches(digits_hard_uri, splits, model, original_checkpoint):
    """Run the method here on `model`, on the batches the one Ray worker reads: the same data plan, read as rank 0
    of 1, the same seeding and one torch thread as the worker's one CPU. Returns the method's report."""
    from pipeline.data.shards import read_meta
    from pipeline.methods import create_method
    from pipeline.methods.base import UnlearnData
    from pipeline.train.datasets import plan_sets
    from pipeline.train.ray_sources import worker_sources

    fraction = create_method(METHOD, SETTINGS, log=None).retain_fraction
    roles = runs._roles(fraction)
    plan = plan_sets(digits_hard_uri, read_meta(digits_hard_uri), splits, sorted(set(roles.values())), 32, [fraction])
    sources, _ = worker_sources(plan, rank=0, world=1)
    data = UnlearnData(forget=sources[roles["forget"]], retain=sources[roles["retain"]], mixed=sources[roles["mixed"]],
                       unseen=sources[roles["unseen"]], num_classes=10)
    teacher = load_checkpoint(original_checkpoint)[0]  # before seeding: building a model draws random weights
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(SEED)
        method = create_method(METHOD, SETTINGS, seed=SEED, log=None)
        return method.unlearn(model, teacher, data, CPU)
    finally:
        torch.set_num_threads(threads)


def test_ray_run_matches_in_process_run_and_writes_a_record(ray_session, digits_hard_uri, digits_hard,
                                                            original_checkpoint, original_model, tmp_path):
    args = unlearn.parser().parse_args([
        "--data", digits_hard_uri, "--original", original_checkpoint, "--method", METHOD, "--forget", FORGET_SPEC,
        "--seed", str(SEED), "--out", str(tmp_path), "--max-failures", "0",
        *[f"--set={METHOD}.{key}={value}" for key, value in SETTINGS.items()]])
    [record] = runs.unlearn(unlearn.run_spec(args))
    (stored,) = load_records(str(tmp_path))
    ray_model, _, _ = load_checkpoint(stored.checkpoint_uri)

    # Ray Data + Ray Train (one worker) and the method in process on the same batches agree to the bit: the same
    # weights, the same per-epoch history (loss, acc_f, tau) and the same number of epochs. (With in-process
    # batches, tests/methods' whole-set permutation, the data order differs: after these 3 epochs 0 of 80 forget,
    # 4 of 720 retain and 30 of 500 test predictions differed from the Ray run's, weights by up to 0.044.)
    sources, splits = digits_hard
    report = in_process_on_the_ray_batches(digits_hard_uri, splits, original_model, original_checkpoint)
    assert report.epochs_run == stored.config["epochs_run"] == SETTINGS["epochs"]
    assert report.history == stored.config["history"]
    for (name, ray_tensor), in_process in zip(ray_model.state_dict().items(), original_model.state_dict().values()):
        assert torch.equal(ray_tensor, in_process), name
    assert record.metrics["acc_forget"] == accuracy(original_model, sources["forget"], CPU)
    assert record.metrics["acc_retain"] == accuracy(original_model, sources["retain"], CPU)

    assert stored.run_id == record.run_id and stored.method == METHOD and stored.config[METHOD]["epochs"] == 3
    assert stored.phases["unlearn"] > 0 and stored.phases["eval"] > 0 and stored.metrics["rf_jsd"] is not None
    with open(stored.checkpoint_uri, "rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == stored.checkpoint_sha256


def test_eval_records_the_metrics_and_the_floor_the_driver_planned(ray_session, digits_hard_uri, digits_hard,
                                                                   original_checkpoint, original_model, tmp_path):
    from jobs import evaluate as eval_job
    from pipeline.runs.evaluate import evaluate
    from pipeline.metrics.floor import whole_split_floor

    args = eval_job.parser().parse_args([
        "--data", digits_hard_uri, "--model", original_checkpoint, "--gold", original_checkpoint,
        "--forget", FORGET_SPEC, "--seed", str(SEED), "--floor-draws", "20", "--label", "original",
        "--out", str(tmp_path), "--max-failures", "0"])
    record = evaluate(eval_job.eval_spec(args))

    sources, _ = digits_hard
    metrics = record.metrics
    assert metrics["acc_test"] == pytest.approx(accuracy(original_model, sources["test"], CPU))
    assert metrics["jsd"] == pytest.approx(0.0, abs=1e-12) and metrics["avg_gap"] == pytest.approx(0.0)
    # The workers' floor is the one computed in this process from whole-split probabilities, same draws.
    floor = whole_split_floor(original_model, sources, CPU, draws=20, seed=SEED)
    assert metrics["rf_jsd_floor"] == pytest.approx(floor.mean, rel=1e-8)
    assert metrics["rf_jsd_floor_std"] == pytest.approx(floor.std, rel=1e-6) and metrics["rf_jsd_floor_draws"] == 20
    (stored,) = load_records(str(tmp_path))
    assert stored.metrics["rf_jsd_floor_e4"] == pytest.approx(floor.mean * 1e4, rel=1e-8)


def test_eval_rejects_a_negative_number_of_floor_draws(digits_hard_uri, original_checkpoint, tmp_path, capsys):
    from jobs import evaluate as eval_job
    from jobs.common import run_main

    code = run_main(eval_job.main, ["--data", digits_hard_uri, "--model", original_checkpoint,
                                    "--floor-draws", "-1", "--out", str(tmp_path)])
    assert code == 2 and "--floor-draws must be 0 or more, not -1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_diverged_ray_run_exits_non_zero_and_saves_no_model_or_record(ray_session, digits_hard_uri,
                                                                         original_checkpoint, tmp_path, capsys):
    from jobs.common import run_main

    code = run_main(unlearn.main, ["--data", digits_hard_uri, "--original", original_checkpoint, "--method", METHOD,
                                   "--forget", FORGET_SPEC, "--seed", str(SEED), "--out", str(tmp_path),
                                   f"--set={METHOD}.lr=1e6", f"--set={METHOD}.epochs=2"])  # default: 1 retry, unused
    error = capsys.readouterr().err
    assert code == 2 and f"{METHOD} diverged in epoch 1" in error and f"{METHOD}.lr=1000000.0" in error
    assert not list(tmp_path.glob("*.pt")) and not (tmp_path / "records").exists()


@pytest.mark.parametrize("channels, classes, problem", [(3, 10, "takes 3-channel images but"),
                                                         (1, 7, "predicts 7 classes but")])
def test_a_checkpoint_built_for_other_data_is_refused_before_ray_starts(digits_hard_uri, tmp_path, capsys,
                                                                         channels, classes, problem):
    from jobs.common import run_main
    from pipeline.models import ModelSpec, build_model, save_checkpoint

    spec = ModelSpec(name="cnn", num_classes=classes, channels=channels, image_size=32)
    checkpoint = str(tmp_path / "other.pt")
    save_checkpoint(build_model(spec), spec, checkpoint)
    from jobs import evaluate

    for job, flags in ((unlearn, ["--original", checkpoint, "--method", METHOD]), (evaluate, ["--model", checkpoint])):
        code = run_main(job.main, ["--data", digits_hard_uri, *flags, "--out", str(tmp_path / "out")])
        assert code == 2 and problem in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_rerun_resumes_only_the_same_run_and_a_finished_one_is_not_run_again(ray_session, digits_hard_uri,
                                                                                original_checkpoint, tmp_path, capsys):
    from jobs.common import run_main

    def run(*extra):
        return run_main(unlearn.main, ["--data", digits_hard_uri, "--original", original_checkpoint, "--method", METHOD,
                                       "--forget", FORGET_SPEC, "--seed", str(SEED), "--out", str(tmp_path),
                                       "--max-failures", "0", f"--set={METHOD}.epochs=1", *extra])

    assert run(f"--set={METHOD}.alpha=8") == 0
    (first,) = load_records(str(tmp_path))
    capsys.readouterr()
    assert run(f"--set={METHOD}.alpha=8") == 0  # identical and finished: nothing runs, no second record
    assert "is complete" in capsys.readouterr().out and len(load_records(str(tmp_path))) == 1
    assert run(f"--set={METHOD}.alpha=2") == 2  # other settings never resume the alpha=8 checkpoint
    assert "settings.alpha: 8 there, 2 now" in capsys.readouterr().err and len(load_records(str(tmp_path))) == 1
    assert run(f"--set={METHOD}.alpha=2", "--overwrite") == 0
    records = load_records(str(tmp_path))
    assert len(records) == 2 and {r.config[METHOD]["alpha"] for r in records} == {8, 2}
    assert all(r.config["epochs_run"] == 1 for r in records)


def test_a_diverged_method_in_a_multi_method_fit_is_recorded_as_failed_and_the_others_run(
        ray_session, digits_hard_uri, original_checkpoint, tmp_path):
    args = unlearn.parser().parse_args([
        "--data", digits_hard_uri, "--original", original_checkpoint, "--method", "lotus", "--forget", FORGET_SPEC,
        "--seed", str(SEED), "--out", str(tmp_path), "--floor-draws", "0"])
    spec = unlearn.run_spec(args).with_runs(MethodRun("lotus", {"lr": 1e6, "epochs": 1}), MethodRun("finetune", {"epochs": 1}))
    failed, finished = runs.unlearn(spec)
    assert failed.status == "failed" and "lotus diverged in epoch 1" in failed.error and not failed.checkpoint_uri
    assert finished.status == "ok" and finished.metrics["acc_test"] > 0.5
    stored = {record.method: record for record in load_records(str(tmp_path))}
    assert stored["lotus"].status == "failed" and stored["finetune"].status == "ok"
    assert not (tmp_path / f"lotus-s{SEED}.pt").exists()

    from pipeline.results.report import write_report

    written = write_report([str(tmp_path)])  # the table leaves the failed row out and lists it with its reason
    with open(written["report.md"]) as handle:
        report = handle.read()
    assert "## Failed runs" in report and "lotus diverged in epoch 1" in report
