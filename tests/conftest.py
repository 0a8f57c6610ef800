"""Shared fixtures. Ray starts once per session and only for the tests that ask for it."""

import contextlib
import hashlib
import os
import pathlib

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import socket

import pytest
import torch


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# S3 tests talk to moto's server on loopback only. The endpoint and fake keys are
# exported before anything (Ray included) starts, so every process inherits them.
MOTO_PORT = _free_port()
os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{MOTO_PORT}"
# Distinctive fake keys, so that a test can show they reach no log, record, report or sweep file.
FAKE_AWS_KEY_ID, FAKE_AWS_SECRET = "AKIAFAKE7TESTKEY0042", "fAkE/sEcReT+never-logged/0123456789abcdefXYZ"
os.environ["AWS_ACCESS_KEY_ID"] = FAKE_AWS_KEY_ID
os.environ["AWS_SECRET_ACCESS_KEY"] = FAKE_AWS_SECRET
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
    os.environ.pop(_var, None)

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORGET_SPEC, SEED = "random:0.1", 3407
CPU = torch.device("cpu")


@contextlib.contextmanager
def one_torch_thread():
    """torch on one thread inside, as before after: tests that run two to a 2-core machine, or whose margins
    were measured on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _code_hash(*relative_paths: str) -> str:
    digest = hashlib.sha256()
    for rel in relative_paths:
        digest.update((ROOT / rel).read_bytes())
    return digest.hexdigest()[:16]


def clear_env(monkeypatch, *names: str) -> None:
    """Remove `names` from os.environ for this test, and whatever the code under test sets them to afterwards.

    monkeypatch.delenv on an absent variable records nothing, so a value the code then sets directly
    (init_ray exports RAY_ADDRESS for Tune trials and subprocesses) outlived the test and sent a later
    test's Ray client to 10.0.0.5. Setting first makes monkeypatch record the original (absence) to restore.
    """
    for name in names:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def digits_hard_uri(tmp_path_factory) -> str:
    from pipeline.data.converters import prepare

    uri = str(tmp_path_factory.mktemp("digits-hard"))
    prepare("digits-hard", uri, seed=0)
    return uri


@pytest.fixture(scope="session")
def digits_hard(digits_hard_uri):
    """{forget, retain, unseen, test, train} TensorSources for random:0.1, seed 3407, plus the Splits."""
    from pipeline.data.local import load_sources

    sources, splits = load_sources(digits_hard_uri, spec=FORGET_SPEC, seed=SEED)
    return sources, splits


FORGET_CLASS = 3


@pytest.fixture(scope="session")
def digits_hard_class(digits_hard_uri):
    """Class unlearning (`class:3`): D_f = every training 3; "test" keeps only the other classes' test images,
    the accuracy a class-forgetting method must hold (the forgotten class's own test accuracy is meant to fall)."""
    from pipeline.data.local import load_sources

    sources, _ = load_sources(digits_hard_uri, spec=f"class:{FORGET_CLASS}", seed=SEED)
    test = sources["test"]
    return {**sources, "test": test.subset(test.labels != FORGET_CLASS)}


def model_spec():
    from pipeline.models import ModelSpec

    return ModelSpec(name="cnn", num_classes=10, channels=1, image_size=32, mean=[0.2], std=[0.25])


@pytest.fixture(scope="session")
def original_checkpoint(digits_hard, request) -> str:
    """The original model (all of train, default recipe), cached across runs while its code is unchanged."""
    from pipeline.methods import create_method
    from pipeline.methods.base import UnlearnData
    from pipeline.models import build_model, save_checkpoint

    key = _code_hash("pipeline/data/converters.py", "pipeline/models/__init__.py", "pipeline/methods/retrain.py",
                     "pipeline/methods/base.py", "pipeline/data/sources.py")
    cache = pathlib.Path(request.config.cache.mkdir("original-model")) / f"digits-hard-{key}.pt"
    if not cache.exists():
        sources, _ = digits_hard
        torch.manual_seed(0)
        model = build_model(model_spec())
        create_method("retrain", seed=0, log=None).unlearn(
            model, None, UnlearnData(forget=sources["forget"], retain=sources["train"]), CPU)
        save_checkpoint(model, model_spec(), str(cache))
    return str(cache)


@pytest.fixture
def original_model(original_checkpoint):
    """A fresh copy of the trained original model for each test to modify."""
    from pipeline.models import load_checkpoint

    model, _, _ = load_checkpoint(original_checkpoint)
    return model


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(num_cpus=4, num_gpus=0, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024**2)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=MOTO_PORT, verbose=False)
    server.start()
    yield os.environ["AWS_ENDPOINT_URL"]
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A fresh bucket on the moto server; returns its name."""
    import boto3

    name = "t-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:20]
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return name
