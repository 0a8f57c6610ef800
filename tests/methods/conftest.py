"""The third forget size the method defaults are tested at (tests/conftest.py has random:0.1 and class:3)."""

import pytest

from tests.conftest import SEED


@pytest.fixture(scope="session")
def digits_hard_30(digits_hard_uri):
    """{forget, retain, unseen, test, train} TensorSources for random:0.3, seed 3407 (239 forget samples)."""
    from pipeline.data.local import load_sources

    sources, _ = load_sources(digits_hard_uri, spec="random:0.3", seed=SEED)
    return sources
