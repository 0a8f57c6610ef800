"""k8s/rayjob-bench.yaml: a KubeRay RayJob that runs the nightly benchmark on a GPU worker group, with S3
credentials from a Kubernetes secret in every pod and none in the file."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "k8s" / "rayjob-bench.yaml"
CREDENTIAL_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@pytest.fixture(scope="module")
def job() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def pods(job: dict) -> dict[str, dict]:
    cluster = job["spec"]["rayClusterSpec"]
    named = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    named.update({group["groupName"]: group["template"]["spec"] for group in cluster["workerGroupSpecs"]})
    return named


def test_it_is_a_rayjob_that_runs_the_nightly_benchmark(job):
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    entrypoint = job["spec"]["entrypoint"]
    assert entrypoint.startswith("python -m jobs.bench --config ")
    config = re.search(r"--config (\S+)", entrypoint).group(1)
    assert config.startswith("/home/ray/ray-unlearn/")  # where docs/kubernetes.md's image puts the repository
    assert (ROOT / config.removeprefix("/home/ray/ray-unlearn/")).is_file()
    assert "--compare" in entrypoint
    assert job["spec"]["shutdownAfterJobFinishes"] is True


def test_ray_matches_the_project_and_every_pod_runs_the_same_image(job):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pinned = [dep for dep in project["project"]["dependencies"] if dep.startswith("ray[")]
    assert pinned and pinned[0].endswith("==" + job["spec"]["rayClusterSpec"]["rayVersion"])
    images = {container["image"] for spec in pods(job).values() for container in spec["containers"]}
    images |= {c["image"] for c in job["spec"]["submitterPodTemplate"]["spec"]["containers"]}
    assert len(images) == 1


def test_a_gpu_worker_group_holds_the_training_workers(job):
    specs = pods(job)
    gpu_limits = {name: int(container["resources"]["limits"].get("nvidia.com/gpu", 0))
                  for name, spec in specs.items() for container in spec["containers"]}
    assert gpu_limits["gpu"] >= 1 and gpu_limits["head"] == 0
    gpu = specs["gpu"]["containers"][0]["resources"]
    assert gpu["requests"] == gpu["limits"]  # GPUs are not overcommitted
    assert job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_every_pod_reads_s3_credentials_from_the_secret_and_the_file_holds_none(job):
    for name, spec in pods(job).items():
        env = {item["name"]: item for container in spec["containers"] for item in container.get("env", [])}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "unlearn-s3", "key": key}, name
        assert not any("value" in env[key] for key in CREDENTIAL_NAMES if key in env), name
    text = MANIFEST.read_text()
    assert not re.search(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b", text)  # no access key id
    assert not re.search(r"[A-Za-z0-9/+]{40}", text)  # nothing shaped like a secret key
