"""Run by tests/test_resume.py in its own process (a multi-node Ray `Cluster` cannot share a process with the
test session's Ray): the gold model's `unlearn train` on a head plus one worker node, uninterrupted, then again
with the worker node removed after an epoch checkpoint and a new node added. Prints one JSON line."""

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

    return train_job.train(train_job.parser().parse_args([
        "--data", data, "--out", out, "--retain-only", "--forget", "random:0.1", "--seed", "3407", "--epochs", str(EPOCHS),
        "--max-failures", str(max_failures), "--no-verify"]))


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


def main(data: str, scratch: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    # The head runs the driver and Ray Train's controller (no CPU); the Train worker needs the worker node.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    node = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    cluster.connect()
    try:
        uninterrupted = train(data, f"{scratch}/uninterrupted", 0)
        out, outcome = f"{scratch}/removed", {}
        runner = threading.Thread(target=lambda: outcome.update(result=train(data, out, 2)), daemon=True)
        runner.start()
        while not checkpointed(f"{out}/ray/train", 1):
            if not runner.is_alive():
                raise SystemExit("the run ended before its second epoch checkpoint")
            time.sleep(0.05)
        cluster.remove_node(node, allow_graceful=False)  # on the main thread: Cluster needs it
        cluster.add_node(num_cpus=2)
        runner.join()
        resumed = outcome["result"]
        print(json.dumps({
            "uninterrupted": sha256(f"{scratch}/uninterrupted/model.pt"), "resumed": sha256(f"{out}/model.pt"),
            "epochs_run": resumed["epochs_run"], "restarts": resumed["restarts"],
            "evaluation": [uninterrupted["evaluation"], resumed["evaluation"]],
            "checkpoints": sorted(os.path.basename(p) for p in glob.glob(f"{out}/ray/train/checkpoint_*")
                                  if os.path.isdir(p))}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:3])
