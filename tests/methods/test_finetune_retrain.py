"""finetune and retrain read D_r only (their defaults at three forget settings: test_defaults.py).

finetune's defaults are Adam at lr 3e-3 for 3 epochs, the original's own optimiser at three times its rate; the
usual SGD defaults forget nothing on a memorised D_f (pipeline/methods/finetune.py gives the figures).
"""

import pytest

from pipeline.methods import create_method
from pipeline.methods.base import UnlearnData
from tests.conftest import CPU, SEED


class ForbiddenSource:
    """A batch source that fails the test if anything asks it for data."""

    def __init__(self, name):
        self.name = name

    def batches(self, batch_size, shuffle=False, seed=0):
        raise AssertionError(f"read {self.name}")


@pytest.mark.parametrize("name", ["finetune", "retrain"])
def test_trains_on_retain_only(name, digits_hard, original_model):
    sources = digits_hard[0]
    method = create_method(name, {"epochs": 1}, seed=SEED, log=None)
    data = UnlearnData(forget=ForbiddenSource("forget"), retain=sources["retain"], mixed=ForbiddenSource("mixed"),
                       unseen=ForbiddenSource("unseen"))
    report = method.unlearn(original_model, None, data, CPU)
    assert report.epochs_run == 1
