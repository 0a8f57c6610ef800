"""`unlearn sweep`: search spaces, the feasibility rule, and real Ray Tune sweeps of LoTUS on digits-hard
(pause + resume, outputs, best feasible trial, a destructive learning rate that must never win)."""

import contextlib
import importlib.util
import io
import math
import os
import time

import pandas as pd
import pytest
import yaml

from jobs import sweep as sweep_job
from pipeline.errors import ConfigError
from pipeline.methods import create_method
from pipeline.results.records import load_records
from tests.conftest import FORGET_SPEC, SEED
from tuning.objective import INFEASIBLE_PENALTY, FeasibilityRule, best_trial
from tuning.spaces import (SPACES_DIR, available_spaces, constants, grid_points, load_space, method_space,
                           tuned_keys)

TABLE_COLUMNS = {"method", "trial_id", "status", "alpha", "lr", "rf_jsd", "acc_retain", "acc_test", "acc_forget",
                 "feasible", "epochs_run", "seconds"}


# ---- spaces and the objective (no Ray) ---------------------------------------------------------------------------

def test_every_sweep_space_names_real_settings_and_lotus_has_the_issue_ranges():
    assert load_space("lotus")["alpha"] == {"loguniform": [0.5, 64.0]}
    assert load_space("lotus")["lr"] == {"loguniform": [1e-6, 1e-2]}
    for method in available_spaces():
        space = load_space(method)
        assert tuned_keys(space), f"{method}: a sweep space must search something"
        create_method(method, {**constants(space), **grid_points(space, 1)[0]}, log=None)  # unknown keys raise
    with pytest.raises(ConfigError, match="no setting"):
        create_method("lotus", {**grid_points(load_space("lotus"), 1)[0], "alpah": 2}, log=None)
    assert set(available_spaces()) == {"lotus", "finetune", "neggrad", "npo", "scrub", "ssd", "randlabel", "badteacher",
                            "salun", "unsir", "jit"}


def test_command_line_overrides_replace_dimensions_and_constants():
    space = method_space("lotus", SPACES_DIR, ["lotus.alpha=loguniform:1,16", "lotus.lr=grid:1e-4,10"],
                         ["lotus.epochs=3"])
    assert space == {"alpha": {"loguniform": [1.0, 16.0]}, "lr": {"choice": [1e-4, 10]}, "epochs": 3}
    with pytest.raises(ConfigError, match="low < high"):
        method_space("lotus", SPACES_DIR, ["lotus.alpha=loguniform:16,1"], [])
    with pytest.raises(ConfigError, match="no search space"):
        load_space("no-such-method")


@pytest.mark.parametrize("trials", [1, 2, 3, 5, 7])
def test_grid_search_gives_exactly_the_trial_budget_inside_the_ranges(trials):
    points = grid_points(load_space("lotus"), trials)
    assert len(points) == trials
    assert len({(p["alpha"], p["lr"]) for p in points}) == trials  # no repeats while the ranges allow
    assert all(0.5 <= p["alpha"] <= 64 and 1e-6 <= p["lr"] <= 1e-2 for p in points)


def test_infeasible_trials_rank_below_every_feasible_one_and_are_never_best():
    rule = FeasibilityRule(acc_retain=1.0, acc_test=0.70, max_drop=0.05)
    good = rule.judge({"acc_retain": 0.96, "acc_test": 0.66, "rf_jsd": 0.30})
    broken = rule.judge({"acc_retain": 0.10, "acc_test": 0.10, "rf_jsd": 0.001})
    diverged = rule.judge({"acc_retain": float("nan"), "acc_test": 0.7, "rf_jsd": float("nan")})
    assert good == {"feasible": True, "objective": 0.30}
    assert broken["feasible"] is False and broken["objective"] == pytest.approx(0.001 + INFEASIBLE_PENALTY)
    assert diverged["feasible"] is False and diverged["objective"] > good["objective"]
    assert broken["objective"] > math.log(2) >= good["objective"]

    table = pd.DataFrame([
        {"trial_id": "a", "status": "finished", "feasible": False, "rf_jsd": 0.001},
        {"trial_id": "b", "status": "stopped early", "feasible": True, "rf_jsd": 0.002},
        {"trial_id": "c", "status": "finished", "feasible": True, "rf_jsd": 0.050},
        {"trial_id": "d", "status": "finished", "feasible": True, "rf_jsd": 0.020},
    ])
    assert best_trial(table)["trial_id"] == "d"
    assert best_trial(table[table["trial_id"] != "d"].iloc[:2]) is None


def test_a_sweep_refuses_to_start_over_an_existing_one_or_resume_a_missing_one(tmp_path):
    (tmp_path / "sweep.yaml").write_text("arguments: {}\n")
    argv = ["--data", "d", "--original", "o", "--methods", "lotus", "--out", str(tmp_path)]
    with pytest.raises(ConfigError, match="already holds a sweep"):
        sweep_job.main(argv)
    with pytest.raises(ConfigError, match="no sweep to resume"):
        sweep_job.main(["--resume", str(tmp_path / "elsewhere")])
    with pytest.raises(ConfigError, match="not in --methods"):
        sweep_job.main([*argv[:-1], str(tmp_path / "new"), "--space", "scrub.lr=loguniform:1e-4,1e-2"])
    with pytest.raises(ConfigError, match="has no setting"):
        sweep_job.main([*argv[:-1], str(tmp_path / "new"), "--space", "lotus.alpah=loguniform:1,8"])


def test_progress_lines_count_the_reported_trial_and_show_the_best_feasible_so_far(capsys):
    from types import SimpleNamespace

    from ray.tune.experiment import Trial

    from tuning.callbacks import ProgressLine

    def trial(trial_id, status, lr, **result):
        return SimpleNamespace(trial_id=trial_id, status=status, config={"lr": lr}, last_result=result, path="")

    good = trial("t0", Trial.TERMINATED, 1e-4, trial_finished=True, feasible=True, rf_jsd=0.02, epochs_done=2)
    wrecked = trial("t1", Trial.TERMINATED, 10.0, trial_finished=True, feasible=False, rf_jsd=0.001, epochs_done=1)
    ending = trial("t2", Trial.RUNNING, 3e-4, trial_finished=True, feasible=True, rf_jsd=0.05, epochs_done=2)
    waiting = trial("t3", Trial.PENDING, 1e-3)
    progress = ProgressLine("lotus", 4, ["lr"])
    progress.on_trial_complete(0, [good, wrecked, ending, waiting], ending)
    progress.on_trial_start(0, [good, wrecked, ending, waiting], waiting)
    completed, started = capsys.readouterr().out.splitlines()
    assert completed.startswith("[sweep lotus] 3/4 done, 0 running | trial t2 finished after 2 epoch(s)")
    assert "best so far RF-JSD 0.02 (lr=0.0001, trial t0)" in completed  # not t1: lower, but infeasible
    assert started.startswith("[sweep lotus] 2/4 done, 2 running | trial t3 started: lr=0.001")


def test_placement_groups_left_by_a_dead_actor_are_found_and_only_those(ray_session):
    import ray
    from ray.util.placement_group import PlacementGroup, placement_group, placement_group_table

    from tuning.callbacks import orphaned_placement_groups

    @ray.remote(num_cpus=0)
    class Creator:  # stands in for a Train controller that reserves its workers' CPUs
        def reserve(self):
            group = placement_group([{"CPU": 0.01}])
            ray.get(group.ready())
            return group.id.hex()

    driver_group = placement_group([{"CPU": 0.01}])  # a driver's own group (like Tune's per trial) stays
    ray.get(driver_group.ready())
    creator = Creator.remote()
    orphan = ray.get(creator.reserve.remote())
    assert orphan not in [group.id.hex() for group in orphaned_placement_groups()]  # its creator is alive
    ray.kill(creator)
    for _ in range(50):  # the GCS learns of the actor's death shortly after the kill
        found = [group.id.hex() for group in orphaned_placement_groups()]
        if orphan in found:
            break
        time.sleep(0.1)
    assert orphan in found and driver_group.id.hex() not in found
    ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(orphan)))
    ray.util.remove_placement_group(driver_group)
    assert placement_group_table(driver_group)["state"] == "REMOVED"


# ---- real sweeps through Ray Tune + Ray Train --------------------------------------------------------------------

def sweep_argv(data, original, out, *extra):
    return ["--data", data, "--original", original, "--methods", "lotus", "--forget", FORGET_SPEC,
            "--seed", str(SEED), "--max-concurrent", "1", "--max-failures", "0", "--set", "lotus.epochs=2",
            "--out", str(out), *extra]


def records_by_trial(run_uri):
    records = [r for r in load_records(str(run_uri)) if r.kind == "sweep-trial"]
    return {r.config["sweep"]["trial_id"]: r for r in records}


def nested_record_count(run_uri, trial_id):
    folder = os.path.join(run_uri, "runs", trial_id, "records")
    return len([name for name in os.listdir(folder) if name.endswith(".json")]) if os.path.isdir(folder) else 0


@pytest.fixture(scope="module")
def original_evaluated_once(ray_session, digits_hard_uri, original_checkpoint, tmp_path_factory):
    """Every sweep evaluates the original first; the module's sweeps share one real evaluation (one Train fit
    less on 2 CPU cores), since they all use the same data, original model, forget set and seed."""
    out = tmp_path_factory.mktemp("original")
    args = sweep_job.parser().parse_args(sweep_argv(digits_hard_uri, original_checkpoint, out))
    accuracies = sweep_job.evaluate_original(args)
    assert 0.0 < accuracies["acc_test"] < accuracies["acc_retain"] <= 1.0  # a model that memorised train
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sweep_job, "evaluate_original", lambda args: dict(accuracies))
        yield accuracies


DESTRUCTIVE_LR = 10.0
DIVERGING_LR = 1e6  # LoTUS's loss is NaN within the first epoch: the trial is recorded as failed, the sweep goes on


@pytest.fixture(scope="module")
def paused_then_resumed_sweep(original_evaluated_once, digits_hard_uri, original_checkpoint, tmp_path_factory):
    """One 4-trial LoTUS sweep (grid over lr, ASHA) that every real-sweep test reads, since each Train fit costs
    10-20 s on 2 CPU cores: paused after its first trial, then resumed to the end. One of its learning rates
    wrecks the model, so the same sweep also shows the feasibility rule at work. In stream mode: a trial's Train
    worker starts its data warm-up tasks inside Tune's placement group, where they once waited forever."""
    out = tmp_path_factory.mktemp("lotus-sweep") / "run"
    argv = sweep_argv(digits_hard_uri, original_checkpoint, out, "--trials", "4", "--search", "grid",
                      "--scheduler", "asha", "--set", "lotus.alpha=8",
                      "--space", f"lotus.lr=grid:1e-4,3e-5,{DESTRUCTIVE_LR:g},{DIVERGING_LR:g}", "--pause-after", "1",
                      "--data-mode", "stream", *(["--mlflow"] if importlib.util.find_spec("mlflow") else []))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        paused = sweep_job.sweep(sweep_job.parser().parse_args(argv))
        after_pause = {trial: record.to_json() for trial, record in records_by_trial(out).items()}
        resumed = sweep_job.resume(str(out))
    return {"out": str(out), "paused": paused, "after_pause": after_pause, "resumed": resumed,
            "printed": printed.getvalue()}


def test_with_mlflow_every_trial_is_an_mlflow_run_nested_under_its_sweep(paused_then_resumed_sweep):
    mlflow = pytest.importorskip("mlflow")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{paused_then_resumed_sweep['out']}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = {run.info.run_id for run in runs if run.info.run_name == "sweep lotus"}
    trials = [run for run in runs if run.info.run_id not in parents]
    assert parents and len(trials) == 4  # one run per trial, across the pause
    assert all(run.data.tags.get("mlflow.parentRunId") in parents for run in trials)
    assert {float(run.data.params["lr"]) for run in trials} == {1e-4, 3e-5, DESTRUCTIVE_LR, DIVERGING_LR}
    assert all("rf_jsd" in run.data.metrics for run in trials if float(run.data.params["lr"]) != DIVERGING_LR)


def test_a_paused_sweep_resumes_without_redoing_finished_trials(paused_then_resumed_sweep):
    run = paused_then_resumed_sweep
    assert run["paused"].complete is False and run["resumed"].complete is True
    assert len(run["after_pause"]) == 1, "the pause came after exactly one finished trial"
    table = run["resumed"].trials
    assert len(table) == 4 and table["trial_id"].is_unique
    assert set(table["status"]) <= {"finished", "stopped early"}
    records = records_by_trial(run["out"])
    assert set(records) == set(table.loc[table["status"] == "finished", "trial_id"])
    (first_trial, first_json), = run["after_pause"].items()
    assert records[first_trial].to_json() == first_json, "the trial finished before the pause was not rerun"
    for trial_id, record in records.items():  # each finished trial's unlearning ran to completion exactly once
        assert nested_record_count(run["out"], trial_id) == (1 if record.status == "ok" else 0), trial_id
    assert "paused with trials left" in run["printed"] and "4/4 done" in run["printed"]


def test_a_lotus_sweep_writes_its_outputs_and_picks_the_best_feasible_trial(paused_then_resumed_sweep):
    run = paused_then_resumed_sweep
    out = run["out"]
    table = pd.read_parquet(os.path.join(out, "trials.parquet"))
    assert TABLE_COLUMNS <= set(table.columns) and len(table) == 4
    assert list(pd.read_csv(os.path.join(out, "trials.csv"))["method"]) == ["lotus"] * 4
    assert sorted(table["lr"]) == [3e-5, 1e-4, DESTRUCTIVE_LR, DIVERGING_LR]
    assert table[table["lr"] != DIVERGING_LR]["epochs_run"].between(1, 2).all()
    with open(os.path.join(out, "heatmap_lotus.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"

    finished = table[(table["status"] == "finished") & table["feasible"]]
    assert not finished.empty, "the small learning rates should give at least one feasible trial"
    expected = finished.loc[finished["rf_jsd"].idxmin()]
    with open(os.path.join(out, "best_configs.yaml")) as handle:
        best = yaml.safe_load(handle)
    assert best == {"lotus": {"epochs": 2, "alpha": 8, "lr": pytest.approx(expected["lr"])}}
    assert run["resumed"].best == best
    record = records_by_trial(out)[expected["trial_id"]]
    assert record.metrics["feasible"] is True and record.metrics["rf_jsd"] == pytest.approx(expected["rf_jsd"])
    assert record.config["lotus"]["lr"] == pytest.approx(expected["lr"])  # the settings the trial really ran


def test_a_destructive_learning_rate_is_recorded_as_infeasible_and_never_best(
        paused_then_resumed_sweep, original_evaluated_once):
    run = paused_then_resumed_sweep
    with open(os.path.join(run["out"], "sweep.yaml")) as handle:
        original = yaml.safe_load(handle)["original"]
    assert original == original_evaluated_once
    wrecked = run["resumed"].trials.set_index("lr").loc[DESTRUCTIVE_LR]
    drop = max(original["acc_retain"] - wrecked["acc_retain"], original["acc_test"] - wrecked["acc_test"])
    assert drop > 0.05 and not wrecked["feasible"], "recorded, with the accuracies that rule it out"
    assert run["resumed"].best["lotus"]["lr"] != DESTRUCTIVE_LR
    stored = {record.config["lotus"]["lr"]: record for record in records_by_trial(run["out"]).values()}
    if DESTRUCTIVE_LR in stored:  # ASHA may stop it after its first epoch, before a record is written
        assert stored[DESTRUCTIVE_LR].metrics["feasible"] is False


def test_a_diverged_trial_is_recorded_as_failed_and_the_sweep_goes_on(paused_then_resumed_sweep):
    run = paused_then_resumed_sweep
    assert run["resumed"].complete is True
    diverged = run["resumed"].trials.set_index("lr").loc[DIVERGING_LR]
    assert diverged["status"] == "finished" and not diverged["feasible"]
    (record,) = [r for r in records_by_trial(run["out"]).values() if r.config["lotus"]["lr"] == DIVERGING_LR]
    assert record.status == "failed" and "lotus diverged in epoch 1" in record.error
    assert record.metrics["feasible"] is False and record.checkpoint_uri is None
    assert run["resumed"].best["lotus"]["lr"] not in (DIVERGING_LR, DESTRUCTIVE_LR)


def test_the_fake_aws_keys_appear_in_no_log_record_report_or_sweep_file(paused_then_resumed_sweep):
    """The session runs with distinctive fake AWS keys (tests/conftest.py); by now Ray has run many jobs with them,
    some over S3. Neither the key id nor the secret may be in the sweep's files, its output, or any Ray log."""
    import ray

    from tests.conftest import FAKE_AWS_KEY_ID, FAKE_AWS_SECRET

    assert os.environ["AWS_SECRET_ACCESS_KEY"] == FAKE_AWS_SECRET  # what every process of the session inherited
    run = paused_then_resumed_sweep
    secrets = (FAKE_AWS_KEY_ID.encode(), FAKE_AWS_SECRET.encode())
    assert not any(secret.decode() in run["printed"] for secret in secrets)
    scanned = 0
    for folder in (run["out"], ray._private.worker._global_node.get_logs_dir_path()):
        for root, _, files in os.walk(folder):
            for name in files:
                with open(os.path.join(root, name), "rb") as handle:
                    data = handle.read()
                assert not any(secret in data for secret in secrets), os.path.join(root, name)
                scanned += 1
    assert scanned > 20  # the sweep's records, tables, plots and state, and Ray's logs
