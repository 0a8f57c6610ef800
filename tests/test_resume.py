"""A resumed run equals the uninterrupted one, to the bit: in process for every multi-epoch method, and through
Ray Train with a worker killed mid-run."""

import copy
import os
import threading

import pytest
import torch

from pipeline.methods import create_method
from pipeline.methods.harness import unlearn_data
from tests.conftest import CPU, FORGET_SPEC, SEED

# (method, settings): three epochs each, checkpointed after the second. One method per kind of state to restore:
# torch's global generator (LoTUS's Gumbel noise), a method's own generator (random labels), per-epoch attributes
# (UNSIR's phase and noise cursor). LoTUS at alpha 2 does not stop early here.
METHODS = [("lotus", {"epochs": 3, "alpha": 2}), ("randlabel", {"epochs": 3}), ("unsir", {"epochs": 3})]


def _unlearn(method, model, original, sources, on_epoch_end=None, resume=None):
    torch.manual_seed(SEED)  # as the Ray loop does before every method
    return method.unlearn(model, original, unlearn_data(sources, method, SEED), CPU, on_epoch_end=on_epoch_end,
                          resume=resume)


@pytest.mark.parametrize("name,config", METHODS, ids=[name for name, _ in METHODS])
def test_a_run_resumed_from_its_epoch_checkpoint_ends_with_the_same_weights(name, config, digits_hard, original_model):
    sources, _ = digits_hard
    original = copy.deepcopy(original_model)
    method, saved = create_method(name, config, seed=SEED, log=None), {}

    def checkpoint_after_second_epoch(epoch, model, entry):
        if epoch == 1:  # what the Ray loop writes at the end of an epoch (pipeline/train/loop.py)
            saved.update(epoch=epoch, model=copy.deepcopy(model.state_dict()),
                         optimizer=copy.deepcopy(method.optimizer.state_dict()),
                         method_state=copy.deepcopy(method.resume_state()))

    uninterrupted = copy.deepcopy(original_model)
    report = _unlearn(method, uninterrupted, original, sources, on_epoch_end=checkpoint_after_second_epoch)
    assert report.epochs_run == 3 and saved, f"{name} ran {report.epochs_run} epochs"

    resumed = copy.deepcopy(original_model)  # a restarted worker starts from the original, then loads the checkpoint
    report = _unlearn(create_method(name, config, seed=SEED, log=None), resumed, original, sources, resume=saved)
    assert report.epochs_run == 3 and len(report.history) == 1  # three in all, one of them in this attempt
    different = [key for key, value in uninterrupted.state_dict().items()
                 if not torch.equal(value, resumed.state_dict()[key])]
    assert not different, f"{name}: resumed run differs in {different[:3]}"


def _kill_a_train_worker_once_checkpointed(folder: str, epoch: int, killed: list, stop) -> None:
    """SIGKILL this Ray session's Train worker as soon as a checkpoint of `epoch` (or later) is on disk."""
    import glob
    import time

    import psutil
    import ray
    from ray._private import ray_constants

    raylet = ray._private.worker._global_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    while not stop.is_set():
        for path in glob.glob(os.path.join(folder, "checkpoint_*", "state.pt")):
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # still being written
                continue
            if saved["epoch"] >= epoch:
                for process in psutil.Process(raylet).children(recursive=True):
                    if "RayTrainWorker" in " ".join(process.cmdline()):
                        process.kill()
                        killed.append(process.pid)
                return
        time.sleep(0.05)


def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_uninterrupted(ray_session, digits_hard_uri,
                                                                           original_checkpoint, tmp_path):
    from jobs import unlearn
    from pipeline.runs.unlearn import unlearn as run_unlearning

    def run(out, *extra):
        return run_unlearning(unlearn.run_spec(unlearn.parser().parse_args([
            "--data", digits_hard_uri, "--original", original_checkpoint, "--method", "lotus", "--forget", FORGET_SPEC,
            "--seed", str(SEED), "--out", str(out), "--set", "lotus.epochs=4", "--set", "lotus.alpha=2",
            "--floor-draws", "0", *extra])))[0]

    uninterrupted = run(tmp_path / "uninterrupted", "--max-failures", "0")
    assert uninterrupted.config["epochs_run"] == 4 and uninterrupted.config["restarts"] == []

    out, killed, stop = tmp_path / "killed", [], threading.Event()
    killer = threading.Thread(target=_kill_a_train_worker_once_checkpointed,
                              args=(str(out / "ray" / f"lotus-s{SEED}"), 1, killed, stop), daemon=True)
    killer.start()
    try:
        resumed = run(out, "--max-failures", "1")
    finally:
        stop.set()
        killer.join()
    assert killed, "the worker was never killed"
    (restart,) = resumed.config["restarts"]
    assert restart["resumed_after_epoch"] >= 1 and restart["cause"]  # the newest checkpoint written, registered or not
    assert resumed.config["epochs_run"] == 4
    assert resumed.checkpoint_sha256 == uninterrupted.checkpoint_sha256  # the same weights, to the bit
    # Every epoch in the record, the ones before the restart too (they come from the checkpoint): the same history.
    assert resumed.config["history"] == uninterrupted.config["history"]
    assert [entry["epoch"] for entry in resumed.config["history"]] == [0, 1, 2, 3]
    for key in ("acc_forget", "acc_retain", "acc_test", "mia", "rf_jsd"):
        assert resumed.metrics[key] == uninterrupted.metrics[key], key
    folders = sorted(p.name for p in (out / "ray" / f"lotus-s{SEED}").glob("checkpoint_*") if p.is_dir())
    assert len(folders) <= 2, f"orphan checkpoints left: {folders}"  # num_to_keep=2, nothing unregistered


def test_a_lost_worker_is_logged_for_a_retry_and_an_error_of_our_own_ends_the_run_at_once(tmp_path):
    """The Train controller's callback (pipeline/train/runner.py), called as Ray Train calls it."""
    from pipeline.errors import UnlearnError
    from pipeline.train.runner import _restart_log_class, read_restarts, run_folder

    log = _restart_log_class()(run_folder(str(tmp_path), "run"))
    log.after_report(None, [{"epoch": 2, "loss": 0.1}], checkpoint=object())
    log.after_exception(None, {1: RuntimeError("ActorDiedError: The actor is dead because its worker process has "
                                               "died. Worker exit type: SYSTEM_ERROR. Some common causes include")})
    (restart,) = read_restarts(str(tmp_path), "run")
    assert restart["resumed_after_epoch"] == 2 and restart["time"]
    assert restart["cause"] == "ActorDiedError: The actor is dead because its worker process has died"

    corrupt = RuntimeError("Traceback (most recent call last):\n  ...\n"
                           "pipeline.errors.DataError: cannot decode image of sample 'digits/17': truncated JPEG")
    with pytest.raises(UnlearnError, match="cannot decode image of sample 'digits/17'"):
        log.after_exception(None, {0: corrupt})  # no retry: it would fail the same way
    assert len(read_restarts(str(tmp_path), "run")) == 1


def test_a_removed_node_is_survived_by_the_gold_model_and_by_an_unlearning_run(digits_hard_uri, original_checkpoint,
                                                                              tmp_path):
    """`unlearn train --retain-only` and `unlearn run` on a two-node Ray cluster, the worker node removed after an
    epoch checkpoint and a new one added (tests/node_removal.py, in a process of its own: a cluster cannot share
    the session's Ray): both end with the weights and metrics of their uninterrupted runs."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "tests.node_removal", digits_hard_uri, str(tmp_path),
                           original_checkpoint], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for job, result in results.items():
        assert result["resumed"] == result["uninterrupted"], job  # the same model, to the bit
        assert result["evaluation"][0] == result["evaluation"][1], job
        assert result["epochs_run"] == 4 and len(result["restarts"]) >= 1, job
        assert len(result["checkpoints"]) <= 2, (job, result["checkpoints"])  # no orphans
