"""The third forget size the method defaults are tested at (tests/conftest.py has random:0.1 and class:3), one
torch thread for the modules that ask for it, and the `quality` mark on every test here."""

import pathlib

import pytest

from tests.conftest import SEED, one_torch_thread


@pytest.fixture
def single_thread():
    """One torch thread during the test: the margins were measured so (benchmarks/method_margins.py), and SSD's
    per-sample backward passes are too small to split (two threads ran 4x slower on the shared 2-core runner)."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def digits_hard_30(digits_hard_uri):
    """{forget, retain, unseen, test, train} TensorSources for random:0.3, seed 3407 (239 forget samples)."""
    from pipeline.data.local import load_sources

    sources, _ = load_sources(digits_hard_uri, spec="random:0.3", seed=SEED)
    return sources


def pytest_collection_modifyitems(config, items):
    """Every method test holds a method to measured figures: `make test-other-cpu` runs them on another CPU's
    arithmetic too (tests/cpu_profile.py). The hook sees the whole session's items, so it picks this folder's."""
    here = pathlib.Path(__file__).parent
    for item in items:
        if here in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.quality)
