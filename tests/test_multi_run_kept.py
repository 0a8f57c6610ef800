"""The finished runs of a multi-run fit (a bench seed's methods, a deletion request's input + method) are kept, so a
worker group restarted after a lost node goes on with the run in progress instead of the fit's first (issue 34).
The end-to-end figure (a node removed during LoTUS: finetune not run again) is benchmarks/lost_node_multi_run.py's,
quoted in docs/cluster.md."""

import hashlib

from pipeline import storage
from pipeline.train.checkpoints import finished_run_uri, keep_finished_run, read_finished_run


def test_a_finished_run_is_kept_with_its_figures_and_read_back(tmp_path):
    folder, model = str(tmp_path / "ray" / "methods-s1-x"), str(tmp_path / "finetune-s1.pt")
    storage.write_bytes(model, b"weights")
    result = {"unlearn_seconds": 6.6, "epochs_run": 3, "evaluation": {"acc_forget": 0.84, "acc_test": None},
              "history": [{"epoch": 0, "loss": 0.27}], "checkpoint_sha256": hashlib.sha256(b"weights").hexdigest()}
    assert read_finished_run(folder, 1, "finetune", model) is None  # not finished yet: run it
    keep_finished_run(folder, 1, "finetune", result)
    assert finished_run_uri(folder, 1, "finetune").endswith("/finished/001-finetune.json")
    assert read_finished_run(folder, 1, "finetune", model) == result
    assert read_finished_run(folder, 2, "finetune", model) is None  # another position in the fit: another run


def test_a_kept_run_whose_model_is_gone_or_changed_is_run_again(tmp_path):
    folder, model = str(tmp_path / "fit"), str(tmp_path / "lotus-s1.pt")
    storage.write_bytes(model, b"weights")
    keep_finished_run(folder, 0, "lotus", {"checkpoint_sha256": hashlib.sha256(b"weights").hexdigest()})
    storage.write_bytes(model, b"other weights")
    assert read_finished_run(folder, 0, "lotus", model) is None
    storage.delete_file(model)
    assert read_finished_run(folder, 0, "lotus", model) is None


def test_a_failed_run_and_one_without_a_model_are_kept_as_they_ended(tmp_path):
    """A diverged method's failure is its result (it would diverge again); `original` saves no model."""
    import numpy as np

    folder = str(tmp_path / "fit")
    keep_finished_run(folder, 0, "original", {"evaluation": {"acc_test": np.float32(0.5)}, "checkpoint_sha256": None})
    keep_finished_run(folder, 1, "neggrad", {"failed": "neggrad diverged: loss nan at epoch 2"})
    assert read_finished_run(folder, 0, "original", None) == {"evaluation": {"acc_test": 0.5},
                                                              "checkpoint_sha256": None}
    assert read_finished_run(folder, 1, "neggrad", None) == {"failed": "neggrad diverged: loss nan at epoch 2"}


def _kill_the_train_worker_once(path: str, killed: list, stop) -> None:
    """SIGKILL this Ray session's Train worker as soon as `path` exists (a run of the fit finished)."""
    import os
    import time

    import psutil
    import ray
    from ray._private import ray_constants

    raylet = ray._private.worker._global_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    while not stop.is_set():
        if os.path.exists(path):
            for process in psutil.Process(raylet).children(recursive=True):
                if "RayTrainWorker" in " ".join(process.cmdline()):
                    process.kill()
                    killed.append(os.stat(path).st_mtime_ns)
            return
        time.sleep(0.05)


def test_a_worker_lost_in_a_multi_run_fit_costs_the_run_in_progress_only(ray_session, digits_hard_uri,
                                                                         original_checkpoint, tmp_path):
    """original, finetune and LoTUS in one fit; the Train worker killed once finetune's model is written: the
    restarted worker group keeps original and finetune (finetune's model is not written again) and runs LoTUS."""
    import os
    import threading

    from pipeline.runs.spec import DataSpec, MethodRun, RayResources, RunSpec
    from pipeline.runs.unlearn import unlearn
    from tests.conftest import FORGET_SPEC, SEED

    runs = (MethodRun("original"), MethodRun("finetune", {"epochs": 1}), MethodRun("lotus", {"epochs": 2}))
    finetune_model, killed, stop = str(tmp_path / f"finetune-s{SEED}.pt"), [], threading.Event()
    killer = threading.Thread(target=_kill_the_train_worker_once, args=(finetune_model, killed, stop), daemon=True)
    killer.start()
    try:
        records = unlearn(RunSpec(data=DataSpec(uri=digits_hard_uri, verify=False), original=original_checkpoint,
                                  runs=runs, out=str(tmp_path), forget=FORGET_SPEC, seed=SEED, floor_draws=0,
                                  ray=RayResources(max_failures=1)))
    finally:
        stop.set()
        killer.join()
    assert killed, "the worker was never killed"
    assert [(r.method, r.status) for r in records] == [("original", "ok"), ("finetune", "ok"), ("lotus", "ok")]
    assert len(records[-1].config["restarts"]) == 1
    assert os.stat(finetune_model).st_mtime_ns == killed[0]  # kept from before the restart, not written again
    assert records[1].checkpoint_sha256 == hashlib.sha256(open(finetune_model, "rb").read()).hexdigest()
