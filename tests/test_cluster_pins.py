"""The pinned versions reach every kind of cluster (issue 34): the launcher's setup commands and the runtime env for
a cluster started elsewhere hold pip to constraints.txt, and name the torch and Ray that constraints.txt pins. The
runtime env is checked by Ray's own validation (no cluster needed); docs/cluster.md shows how each is used."""

import re

import yaml

from tests.conftest import ROOT


def pins() -> dict[str, str]:
    return dict(line.strip().split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))


def test_the_launcher_installs_every_package_from_the_constraints():
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    mount = next(remote for remote, local in cluster["file_mounts"].items() if local == ".")
    installs = [command for command in cluster["setup_commands"] if "pip install" in command]
    assert installs and all(f"-c {mount}/constraints.txt" in command for command in installs), installs
    assert f"ray[default]=={pins()['ray']}" in " ".join(installs)


def test_the_runtime_env_is_valid_for_ray_and_holds_pip_to_the_constraints():
    from ray.runtime_env import RuntimeEnv

    body = yaml.safe_load((ROOT / "configs" / "ray" / "runtime-env.yaml").read_text())
    packages = RuntimeEnv(**body)["pip"]["packages"]  # Ray's validation: raises on a malformed runtime env
    # The working directory `ray job submit --working-dir .` uploads, where constraints.txt travels with the code.
    assert "-c ${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}/constraints.txt" in packages
    assert f"torch=={pins()['torch']}" in packages and f"torchvision=={pins()['torchvision']}" in packages
    assert "${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}" in packages  # the project's other dependencies
    assert not any(re.match(r"ray\b", package) for package in packages)  # a runtime env cannot replace its Ray


def test_the_runtime_env_file_is_not_taken_for_a_bench_config():
    # tests glob configs/*.yaml as bench configs; the runtime env lives a folder below.
    assert not (ROOT / "configs" / "runtime-env.yaml").exists()
