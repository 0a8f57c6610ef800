"""cluster.yaml is a valid Ray cluster-launcher config (checked offline: Ray's schema, no AWS, no cluster)."""

import copy
import pathlib
import re

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
GPU_INSTANCE = re.compile(r"^(g4dn|g5|g6|g6e|p3|p4d|p4de|p5)\.")


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def worker_types(cluster):
    return {name: spec for name, spec in cluster["available_node_types"].items()
            if name != cluster["head_node_type"]}


def test_required_keys_and_node_types(cluster):
    for key in ("cluster_name", "max_workers", "provider", "auth", "docker", "available_node_types",
                "head_node_type", "file_mounts", "setup_commands", "head_start_ray_commands",
                "worker_start_ray_commands"):
        assert key in cluster, key
    assert cluster["provider"]["type"] == "aws" and cluster["provider"]["region"]
    assert cluster["head_node_type"] in cluster["available_node_types"]
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert not GPU_INSTANCE.match(head["node_config"]["InstanceType"]), "the head node should be a CPU node"
    workers = worker_types(cluster)
    assert any(GPU_INSTANCE.match(spec["node_config"]["InstanceType"]) for spec in workers.values())
    for name, spec in workers.items():
        assert spec["node_config"]["InstanceType"], name
        assert 0 <= spec["min_workers"] <= spec["max_workers"] <= cluster["max_workers"], name
    assert sum(spec["min_workers"] for spec in workers.values()) <= cluster["max_workers"]


def test_node_types_named_in_the_docs_exist(cluster):
    docs = (ROOT / "docs" / "cluster.md").read_text()
    named = set(re.findall(r"`((?:head|worker)\.[a-z0-9-]+)`", docs))
    assert named, "docs/cluster.md should name the node types it talks about"
    assert named <= set(cluster["available_node_types"]), named - set(cluster["available_node_types"])


def test_project_is_mounted_and_installed_with_the_pinned_ray(cluster):
    mount = next(remote for remote, local in cluster["file_mounts"].items() if local == ".")
    assert any(f"pip install -e {mount}" in command for command in cluster["setup_commands"])
    pyproject = (ROOT / "pyproject.toml").read_text()
    ray_pin = re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', pyproject).group(1)
    # The cluster must run the Ray version of the client that submits jobs and validates this file.
    assert f"ray[default]=={ray_pin}" in " ".join(cluster["setup_commands"])
    assert cluster["docker"]["image"].startswith(f"rayproject/ray:{ray_pin}-py311")
    for command in cluster["head_start_ray_commands"][1:] + cluster["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token" in command


def test_rays_own_validator_accepts_it_and_catches_a_typo(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    # prepare_config only merges the AWS defaults.yaml and fills per-type limits: no AWS call.
    validate_config(prepare_config(copy.deepcopy(cluster)))
    broken = copy.deepcopy(cluster)
    broken["available_node_types"][next(iter(worker_types(cluster)))]["minworkers"] = 1
    with pytest.raises(Exception, match="minworkers"):
        validate_config(prepare_config(broken))
