"""A config's Ray worker group must fit the cluster-launcher file it runs on (issue 34: the nightly config asked for
8 GPU workers, cluster.yaml allowed at most 4 single-GPU nodes, and Ray would have waited all night). Offline:
pipeline/cluster.py reads the launcher file; `unlearn bench --cluster` refuses before any work."""

import copy
import pathlib

import pytest
import yaml

from jobs import bench
from jobs.common import run_main
from pipeline.cluster import capacity, check_fits
from pipeline.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLUSTER = yaml.safe_load((ROOT / "cluster.yaml").read_text())


def shipped_ray_sections():
    from jobs.diffusion import load_bench_config

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        diffusion = yaml.safe_load(path.read_text()).get("family") == "diffusion"
        yield path.name, (load_bench_config(str(path)) if diffusion else bench.load_config(str(path)))["ray"]


@pytest.mark.parametrize("name,ray", list(shipped_ray_sections()))
def test_every_shipped_config_fits_the_shipped_cluster(name, ray):
    room = check_fits(int(ray["workers"]), bool(ray.get("gpus", False)), float(ray.get("cpus_per_worker", 1.0)),
                      CLUSTER, name, "cluster.yaml")
    assert room.workers >= int(ray["workers"])


def test_the_nightly_gets_its_8_gpus_from_two_4_gpu_nodes():
    room = capacity(CLUSTER, cpus=4, gpus=1)
    assert room.workers == 8 and room.lines == ("worker.gpu: up to 2 x g5.12xlarge (48 CPUs, 4 GPUs), 4 per node",)


def old_cluster() -> dict:
    """cluster.yaml as it shipped before: at most 4 single-GPU g5.xlarge nodes."""
    cluster = copy.deepcopy(CLUSTER)
    cluster["available_node_types"]["worker.gpu"]["max_workers"] = 4
    cluster["available_node_types"]["worker.gpu"]["node_config"]["InstanceType"] = "g5.xlarge"
    return cluster


def test_bench_refuses_a_config_the_cluster_can_never_hold_naming_both_numbers(tmp_path, capsys):
    old = tmp_path / "cluster.yaml"
    old.write_text(yaml.safe_dump(old_cluster()))
    nightly = str(ROOT / "configs" / "imagenet-nightly.yaml")
    assert run_main(bench.main, ["--config", nightly, "--cluster", str(old), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert "asks for 8 Ray Train workers (ray.workers; 1 GPU and 4 CPUs each)" in error
    assert "can start at most 4: worker.gpu: up to 4 x g5.xlarge (4 CPUs, 1 GPU), 1 per node" in error
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_bench_says_a_config_fits(tmp_path, capsys):
    """The check alone (the run itself is refused next: no data there), its line printed before any work."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"uri": str(tmp_path / "nothing")}, "methods": ["lotus"],
                                      "ray": {"workers": 3, "gpus": True, "cpus_per_worker": 8}}))
    assert run_main(bench.main, ["--config", str(config), "--cluster", str(ROOT / "cluster.yaml"),
                                 "--out", str(tmp_path / "run")]) == 2
    printed = capsys.readouterr()
    assert "3 Ray Train worker(s) fit" in printed.out and "holds up to 8" in printed.out
    assert "no dataset at" in printed.err


def test_capacity_counts_the_head_shares_max_workers_and_reads_explicit_resources():
    cluster = {"max_workers": 3, "head_node_type": "head",
               "available_node_types": {
                   "head": {"node_config": {"InstanceType": "m5.2xlarge"}},  # 8 CPUs
                   "big": {"max_workers": 2, "node_config": {"InstanceType": "p4d.24xlarge"}},  # 8 GPUs each
                   "small": {"max_workers": 5, "node_config": {"InstanceType": "g4dn.xlarge"}},
                   "own": {"max_workers": 1, "resources": {"CPU": 6, "GPU": 2},
                           "node_config": {"InstanceType": "x9.custom"}}}}
    # GPU workers: 2 p4d (16) first, then the 1 node left of the budget of 3 goes to `own` (2): not g4dn (1).
    assert capacity(cluster, cpus=1, gpus=1).workers == 18
    # CPU-only workers of 4 CPUs: the head holds 2; p4d 24 each x 2, then `own` 1 (its 6 CPUs).
    assert capacity(cluster, cpus=4, gpus=0).workers == 2 + 48 + 1
    unknown = copy.deepcopy(cluster)
    del unknown["available_node_types"]["own"]["resources"]
    with pytest.raises(ConfigError, match=r"x9.custom, whose CPUs and GPUs this check does not know: give them"):
        capacity(unknown, cpus=1, gpus=1)
