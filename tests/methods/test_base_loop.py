"""The shared loop's clock: it covers the method's work, not what the epoch callback does."""

import time

from pipeline.methods import create_method
from pipeline.methods.harness import unlearn_data
from tests.conftest import CPU, SEED

CALLBACK_SECONDS = 0.5


def test_epoch_callbacks_are_timed_apart_from_the_unlearning(digits_hard, original_model):
    sources = digits_hard[0]
    method = create_method("finetune", {"epochs": 2}, seed=SEED, log=None)
    callbacks = []

    def slow_checkpoint(epoch, model, entry):  # stands in for a checkpoint write or a sweep's evaluation
        callbacks.append(epoch)
        time.sleep(CALLBACK_SECONDS)

    started = time.perf_counter()
    report = method.unlearn(original_model, None, unlearn_data(sources, method, SEED), CPU,
                            on_epoch_end=slow_checkpoint)
    wall = time.perf_counter() - started
    assert callbacks == [0, 1]
    assert report.epoch_report_seconds >= 2 * CALLBACK_SECONDS
    # Both clocks together account for the call, and the method's own share leaves the sleeps out.
    assert report.unlearn_seconds > 0
    assert report.unlearn_seconds + report.epoch_report_seconds <= wall
    assert report.unlearn_seconds <= wall - 2 * CALLBACK_SECONDS
