"""The shared loop: its clock covers the method's work only; a frozen teacher's outputs are computed once per sample."""

import copy
import time

import pytest
import torch

from pipeline.methods import create_method
from pipeline.methods.teacher import FrozenOutputs
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


class CountingModel(torch.nn.Module):
    """A frozen stand-in teacher that counts how many images it has seen."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.images_seen = 0

    def forward(self, images):
        self.images_seen += len(images)
        return self.linear(images)


def test_frozen_outputs_compute_each_sample_once_and_return_the_model_s_outputs():
    model = CountingModel().eval()
    inputs = {f"id{i}": torch.randn(4, generator=torch.Generator().manual_seed(i)) for i in range(10)}
    outputs = FrozenOutputs(model, max_bytes=1024**2)

    def ask(ids):
        return outputs(torch.stack([inputs[i] for i in ids]), ids)

    first = ask(["id0", "id1", "id2", "id3"])
    ask(["id4", "id5", "id6", "id7", "id8", "id9"])
    assert model.images_seen == 10
    later = ask(["id3", "id9", "id0"])  # a later epoch, another order: a lookup, no forward pass
    assert model.images_seen == 10 and outputs.forward_passes == 2
    with torch.no_grad():
        assert torch.equal(later, model.linear(torch.stack([inputs[i] for i in ["id3", "id9", "id0"]])))
        assert torch.equal(first[3], later[0])
    # A batch mixing known and new samples is computed whole; only the new ones are added.
    inputs["new"] = torch.randn(4)
    ask(["id1", "new"])
    assert model.images_seen == 12 and len(outputs.rows) == 11


def test_frozen_outputs_store_nothing_past_their_memory_budget():
    model = CountingModel().eval()
    outputs = FrozenOutputs(model, max_bytes=0)
    for _ in range(2):
        outputs(torch.randn(5, 4), [f"id{i}" for i in range(5)])
    assert model.images_seen == 10 and not outputs.rows


def test_lotus_with_its_teacher_cache_trains_exactly_as_without(digits_hard, original_model):
    sources = digits_hard[0]
    models = []
    for cache_mb in (1024, 0):
        model, original = copy.deepcopy(original_model), copy.deepcopy(original_model)
        torch.manual_seed(SEED)
        method = create_method("lotus", {"epochs": 2, "teacher_cache_mb": cache_mb}, seed=SEED, log=None)
        method.unlearn(model, original, unlearn_data(sources, method, SEED), CPU)
        models.append(model)
        # With the cache the teacher runs in the first epoch only: 80 of D_f + 216 (30 %) of D_r = 296 samples are
        # 2 batches of 128, the 40 left over being folded into the second (fold_short_last).
        assert method.teacher_outputs.forward_passes == (2 if cache_mb else 4)
    for cached, computed in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        assert torch.equal(cached, computed)


def test_a_diverged_run_stops_with_an_error_naming_the_method_epoch_and_setting(digits_hard, original_model):
    from pipeline.errors import DivergedError

    sources = digits_hard[0]
    method = create_method("lotus", {"lr": 1e6, "epochs": 3}, seed=SEED, log=None)
    checkpointed = []
    with pytest.raises(DivergedError, match=r"lotus diverged in epoch 1: .*lotus\.lr=1000000\.0.*No model was saved"):
        method.unlearn(original_model, copy.deepcopy(original_model), unlearn_data(sources, method, SEED), CPU,
                       on_epoch_end=lambda epoch, model, entry: checkpointed.append(epoch))
    assert checkpointed == []  # the diverged epoch never reached a checkpoint


def test_a_healthy_run_passes_the_finiteness_check(original_model):
    method = create_method("finetune", seed=SEED, log=None)
    method.check_finite(original_model, 0, 0.5)
    with torch.no_grad():
        next(original_model.parameters())[0] = float("nan")
    with pytest.raises(Exception, match="non-finite values in 1 of"):
        method.check_finite(original_model, 0, 0.5)
