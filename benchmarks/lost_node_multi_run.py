"""What a lost node costs a multi-run fit (a bench seed's methods, a deletion request's input + method), which keeps
no epoch checkpoints (issue 34). On a two-node Ray cluster (a CPU-less head, one 2-CPU worker node), the same fit of
`original`, finetune and LoTUS on digits-hard runs once uninterrupted, then again with the worker node removed once
finetune's model is written (LoTUS running) and a new node added; Ray Train restarts the worker group
(max_failures 1). Prints one JSON line: both fits' wall seconds, the methods' own seconds, the restarts, and whether
finetune's model was written again (the restarted fit ran it again; since finished runs are kept, it should not).

    .venv/bin/python -m benchmarks.lost_node_multi_run DATA ORIGINAL SCRATCH
(DATA: `unlearn prepare --source digits-hard`; ORIGINAL: a trained checkpoint of it, e.g. `unlearn train`'s.)
"""

import json
import os
import sys
import threading
import time

METHODS = {"finetune": {"optimizer": "adam", "lr": 0.003, "epochs": 3}, "lotus": {"alpha": 8, "epochs": 3}}


def fit(data: str, original: str, out: str, max_failures: int) -> list:
    from pipeline.runs.spec import DataSpec, MethodRun, RayResources, RunSpec
    from pipeline.runs.unlearn import unlearn

    runs = (MethodRun("original"), *(MethodRun(method, settings) for method, settings in METHODS.items()))
    return unlearn(RunSpec(data=DataSpec(uri=data, verify=False), original=original, runs=runs, out=out, seed=3407,
                           floor_draws=0, ray=RayResources(workers=1, max_failures=max_failures)))


def summary(records: list, seconds: float) -> dict:
    return {"fit_seconds": round(seconds, 1), "restarts": len(records[-1].config["restarts"]),
            "method_seconds": {r.method: round(r.unlearn_seconds or 0.0, 1) for r in records},
            "eval_seconds": {r.method: round(r.phases["eval"], 1) for r in records}}


def main(data: str, original: str, scratch: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    node = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    cluster.connect()
    try:
        started = time.perf_counter()
        plain = summary(fit(data, original, f"{scratch}/plain", 0), time.perf_counter() - started)

        out = f"{scratch}/lost-node"
        finetune_model = f"{out}/finetune-s3407.pt"
        outcome, writes = {}, []
        started = time.perf_counter()
        runner = threading.Thread(target=lambda: outcome.update(records=fit(data, original, out, 1)), daemon=True)
        runner.start()
        while not os.path.exists(finetune_model):
            if not runner.is_alive():
                raise SystemExit("the fit ended before finetune's model was written")
            time.sleep(0.05)
        writes.append(os.stat(finetune_model).st_mtime_ns)
        removed_at = time.perf_counter() - started
        cluster.remove_node(node, allow_graceful=False)  # on the main thread: Cluster needs it
        cluster.add_node(num_cpus=2)
        runner.join()
        lost = summary(outcome["records"], time.perf_counter() - started)
        writes.append(os.stat(finetune_model).st_mtime_ns)
        print(json.dumps({"uninterrupted": plain, "node_lost": {**lost, "removed_after_seconds": round(removed_at, 1),
                                                               "finetune_written_again": writes[1] != writes[0]},
                          "extra_seconds": round(lost["fit_seconds"] - plain["fit_seconds"], 1)}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
