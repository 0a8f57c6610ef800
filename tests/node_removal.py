"""Run by tests/test_resume.py in its own process (a multi-node Ray `Cluster` cannot share a process with the
test session's Ray): on a head plus one worker node, the gold model's `unlearn train` and LoTUS's `unlearn run`,
each uninterrupted, then again with the worker node removed after an epoch checkpoint and a new node added.
Prints one JSON line."""

import glob
import json
import os
import sys
import threading
import time

import torch

EPOCHS = 4


def train(data: str, out: str, max_failures: int) -> dict:
    from jobs import train as train_job
    from pipeline.runs.train import train as run_training

    return run_training(train_job.train_spec(train_job.parser().parse_args([
        "--data", data, "--out", out, "--retain-only", "--forget", "random:0.1", "--seed", "3407", "--epochs", str(EPOCHS),
        "--max-failures", str(max_failures), "--no-verify"])))


def unlearn(data: str, original: str, out: str, max_failures: int) -> dict:
    from jobs import unlearn as unlearn_job
    from pipeline.runs.unlearn import unlearn as run_unlearning

    [record] = run_unlearning(unlearn_job.run_spec(unlearn_job.parser().parse_args([
        "--data", data, "--original", original, "--method", "lotus", "--forget", "random:0.1", "--seed", "3407",
        "--set", f"lotus.epochs={EPOCHS}", "--set", "lotus.alpha=2", "--floor-draws", "0", "--no-verify",
        "--out", out, "--max-failures", str(max_failures)])))
    return {"epochs_run": record.config["epochs_run"], "restarts": record.config["restarts"],
            "evaluation": record.metrics, "model": record.checkpoint_uri}


def checkpointed(folder: str, epoch: int) -> bool:
    for path in glob.glob(os.path.join(folder, "checkpoint_*", "state.pt")):
        try:
            if torch.load(path, map_location="cpu", weights_only=True)["epoch"] >= epoch:
                return True
        except Exception:  # still being written
            continue
    return False


def sha256(path: str) -> str:
    import hashlib

    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def interrupted(cluster, node, job, folder: str):
    """Run `job` in a thread; once `folder` holds the checkpoint of the second epoch, replace the worker node."""
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(result=job()), daemon=True)
    runner.start()
    while not checkpointed(folder, 1):
        if not runner.is_alive():
            raise SystemExit(f"the run ended before its second epoch checkpoint ({folder})")
        time.sleep(0.05)
    cluster.remove_node(node, allow_graceful=False)  # on the main thread: Cluster needs it
    new_node = cluster.add_node(num_cpus=2)
    runner.join()
    return outcome["result"], new_node


def outcome(uninterrupted: dict, uninterrupted_model: str, resumed: dict, resumed_model: str, folder: str) -> dict:
    return {"uninterrupted": sha256(uninterrupted_model), "resumed": sha256(resumed_model),
            "epochs_run": resumed["epochs_run"], "restarts": resumed["restarts"],
            "evaluation": [uninterrupted["evaluation"], resumed["evaluation"]],
            "checkpoints": sorted(os.path.basename(p) for p in glob.glob(f"{folder}/checkpoint_*") if os.path.isdir(p))}


def main(data: str, scratch: str, original: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    # The head runs the driver and Ray Train's controller (no CPU); the Train worker needs the worker node.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    node = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    cluster.connect()
    try:
        gold = train(data, f"{scratch}/gold", 0)
        out = f"{scratch}/gold-removed"
        gold_resumed, node = interrupted(cluster, node, lambda: train(data, out, 2), f"{out}/ray/train")
        results = {"train": outcome(gold, f"{scratch}/gold/model.pt", gold_resumed, f"{out}/model.pt",
                                    f"{out}/ray/train")}
        lotus = unlearn(data, original, f"{scratch}/lotus", 0)
        out = f"{scratch}/lotus-removed"
        lotus_resumed, node = interrupted(cluster, node, lambda: unlearn(data, original, out, 2),
                                          f"{out}/ray/lotus-s3407")
        results["run"] = outcome(lotus, lotus["model"], lotus_resumed, lotus_resumed["model"], f"{out}/ray/lotus-s3407")
        print(json.dumps(results))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
