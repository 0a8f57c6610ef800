"""Which Ray a job uses (issue 34: on a node of a running cluster, a job without RAY_ADDRESS started a private Ray
without a word). --address / RAY_ADDRESS choose it, `auto` joins the Ray `ray start` started on this node, and a
start-up line says which Ray the job runs on. No cluster here: ray.init is replaced where a test starts Ray."""

import os
import socket

import pytest

from jobs import unlearn as unlearn_job
from jobs.common import apply_endpoint
from pipeline.errors import ConfigError
from pipeline.train import ray_address
from pipeline.train.ray_address import RayChoice, check_address, choose, started_line
from tests.conftest import clear_env

RUN = ["--data", "d", "--original", "m", "--method", "lotus", "--out", "o"]


@pytest.fixture
def node_gcs(tmp_path):
    """A listening socket standing in for the GCS of a `ray start` on this node, recorded where Ray records it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(address)
    yield {"RAY_TMPDIR": str(tmp_path)}, address
    server.close()


@pytest.mark.parametrize("value", ["local", "auto", "10.0.0.5:6379", "head.example.com:6379", "ray://10.0.0.5:10001",
                                   "[::1]:6379"])
def test_addresses_ray_understands_are_accepted(value):
    assert check_address(value) == value


@pytest.mark.parametrize("argv, words", [
    (["--address", "head"], "'head' is not local, auto, HOST:PORT or ray://HOST:PORT"),
    (["--address", "http://head:8265"], "is a dashboard / job-server URL"),
])
def test_a_wrong_address_is_a_flag_error(capsys, argv, words):
    with pytest.raises(SystemExit) as stop:
        unlearn_job.parser().parse_args([*RUN, *argv])
    assert stop.value.code == 2 and words in capsys.readouterr().err


def test_without_address_a_job_starts_its_own_ray_and_says_so(tmp_path):
    choice = choose({"RAY_TMPDIR": str(tmp_path)})  # no `ray start` recorded there
    assert choice == RayChoice(None, "default", "local", None)
    assert started_line(choice, {"CPU": 4.0}, 1) == \
        "Ray: started a local Ray of this job's own on this machine (4 CPUs, 0 GPUs; no --address or RAY_ADDRESS)"


def test_a_ray_started_on_this_node_is_named_with_the_flag_that_joins_it(node_gcs):
    environ, address = node_gcs
    choice = choose(environ)
    assert choice.address is None and choice.node_ray == address
    line = started_line(choice, {"CPU": 2.0}, 1)
    assert f"A Ray started with `ray start` runs on this node at {address}: --address auto runs the job there" in line


def test_auto_joins_the_node_ray_and_only_a_live_one(node_gcs, tmp_path):
    environ, address = node_gcs
    choice = choose({**environ, "RAY_ADDRESS": "auto"})
    assert (choice.address, choice.source, choice.asked) == (address, "RAY_ADDRESS", "auto")
    assert started_line(choice, {"CPU": 64.0, "GPU": 8.0}, 3) == \
        f"Ray: joined the Ray started on this node at {address} (RAY_ADDRESS auto): 64 CPUs, 8 GPUs on 3 node(s)"
    # A file `ray stop` did not remove (a crash): nothing answers there, so nothing is joined by accident.
    (tmp_path / "stale" / "ray").mkdir(parents=True)
    (tmp_path / "stale" / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
    with pytest.raises(ConfigError, match="RAY_ADDRESS auto: no Ray is running on this node .*ray start --head"):
        choose({"RAY_TMPDIR": str(tmp_path / "stale"), "RAY_ADDRESS": "auto"})
    assert choose({"RAY_TMPDIR": str(tmp_path / "stale")}).node_ray is None


def test_the_flag_is_exported_before_ray_starts_and_named_as_the_source(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # this machine's own `ray start`, if any, stays out of it
    clear_env(monkeypatch, "RAY_ADDRESS", ray_address._SOURCE_ENV)
    args = unlearn_job.parser().parse_args([*RUN, "--address", "10.0.0.5:6379"])
    apply_endpoint(args)
    assert os.environ["RAY_ADDRESS"] == "10.0.0.5:6379"  # Tune trials and subprocesses inherit it
    choice = choose()
    assert (choice.address, choice.source) == ("10.0.0.5:6379", "--address")
    assert started_line(choice, {"CPU": 16.0, "GPU": 4.0}, 5) == \
        "Ray: joined the cluster at 10.0.0.5:6379 (--address): 16 CPUs, 4 GPUs on 5 node(s)"
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert started_line(choose(), {"CPU": 2.0}, 1).endswith("(2 CPUs, 0 GPUs; --address local)")


def test_a_job_that_ray_job_submit_started_says_so():
    environ = {"RAY_ADDRESS": "10.0.0.5:6379", "RAY_JOB_CONFIG_JSON_ENV_VAR": '{"runtime_env": {}}'}
    assert started_line(choose(environ), {"CPU": 64.0, "GPU": 8.0}, 3) == \
        "Ray: joined the cluster at 10.0.0.5:6379 (RAY_ADDRESS from ray job submit): 64 CPUs, 8 GPUs on 3 node(s)"


def test_a_wrong_ray_address_in_the_environment_is_named(monkeypatch):
    with pytest.raises(ConfigError, match="RAY_ADDRESS: 'head' is not local, auto"):
        choose({"RAY_ADDRESS": "head"})


@pytest.fixture
def fake_ray(monkeypatch, tmp_path):
    """ray.init and what init_ray asks of the running Ray, replaced: no Ray starts, the calls are recorded."""
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 48.0, "GPU": 4.0})
    monkeypatch.setattr(ray, "nodes", lambda: [{}, {}])
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    clear_env(monkeypatch, "RAY_ADDRESS", ray_address._SOURCE_ENV, "RAY_TRAIN_ENABLE_PRINT_PATCH",
              "RAY_DATA_LOG_LEVEL", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")
    return calls


def test_init_ray_joins_the_named_cluster_and_prints_it(fake_ray, monkeypatch, capsys):
    from pipeline.train.runner import init_ray

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    init_ray(2)
    assert fake_ray == [{"address": "10.0.0.5:6379", "log_to_driver": True}]
    assert "Ray: joined the cluster at 10.0.0.5:6379 (RAY_ADDRESS): 48 CPUs, 4 GPUs on 2 node(s)" in \
        capsys.readouterr().out


def test_init_ray_starts_a_local_ray_without_an_address(fake_ray, capsys):
    from pipeline.train.runner import init_ray

    init_ray(2)
    assert fake_ray[0]["address"] == "local" and fake_ray[0]["num_cpus"] >= 4
    assert "Ray: started a local Ray of this job's own on this machine" in capsys.readouterr().out
