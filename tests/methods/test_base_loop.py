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


def test_lotus_runs_in_channels_last_and_gives_the_model_back_as_it_came(digits_hard, original_model):
    """`channels_last` (LoTUS's default, for speed): student and teacher in that layout during the run, the caller's
    model handed back in its own; the same weights as the NCHW run within what 2 AdamW steps of lr 1e-4 can move
    (the layouts' kernels sum in another order, and Adam's normalised step turns a tiny gradient difference into
    up to a step's size)."""
    sources = digits_hard[0]
    runs = {}
    for layout in (True, False):
        model, original = copy.deepcopy(original_model), copy.deepcopy(original_model)
        torch.manual_seed(SEED)
        method = create_method("lotus", {"epochs": 1, "channels_last": layout}, seed=SEED, log=None)
        seen = []
        method.prepare = lambda model, data, device, prepare=method.prepare: (
            seen.append(model.backbone.features[4].weight.is_contiguous(memory_format=torch.channels_last)),
            prepare(model, data, device))[1]
        method.unlearn(model, original, unlearn_data(sources, method, SEED), CPU)
        assert seen == [layout]
        assert method.teacher.backbone.features[4].weight.is_contiguous(memory_format=torch.channels_last) == layout
        assert all(tensor.is_contiguous() for tensor in model.state_dict().values())
        assert original.backbone.features[4].weight.is_contiguous()  # the caller's original is never touched
        runs[layout] = model.state_dict()
    for name, tensor in runs[True].items():
        assert torch.allclose(tensor.float(), runs[False][name].float(), rtol=0, atol=4e-4), name


def test_step_statistics_average_the_epoch_s_training_batches_and_restore_the_momentum():
    from torch import nn

    from pipeline.methods.batchnorm import StepStatistics

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3)).train()
    norm = model[1]
    norm.running_mean.fill_(7.0)
    batches = [torch.rand(8, 1, 4, 4) * 3 + 1, torch.rand(12, 1, 4, 4)]
    statistics = StepStatistics(model).start()
    with torch.no_grad():
        for batch in batches:
            model(batch)
        features = [model[0](batch) for batch in batches]
    assert statistics.finish() == 2 and norm.momentum == 0.1
    # update_bn's rule: the plain average over batches of each batch's mean and unbiased variance.
    assert torch.allclose(norm.running_mean, sum(f.mean(dim=(0, 2, 3)) for f in features) / 2, atol=1e-5)
    assert torch.allclose(norm.running_var, sum(f.var(dim=(0, 2, 3)) for f in features) / 2, rtol=1e-4)
    # An epoch without a training forward keeps the statistics it started with.
    before = norm.running_mean.clone()
    assert StepStatistics(model).start().finish() == 0
    assert torch.equal(norm.running_mean, before) and norm.momentum == 0.1


def test_lotus_with_step_statistics_makes_no_refresh_pass(digits_hard, original_model, monkeypatch):
    from pipeline.methods import base

    sources = digits_hard[0]
    passes = []
    monkeypatch.setattr(base, "refresh_batchnorm_statistics", lambda *args, **kwargs: passes.append(1))
    for refresh_from, expected in (("steps", 0), ("pass", 2)):
        passes.clear()
        method = create_method("lotus", {"epochs": 2, "batchnorm_refresh_from": refresh_from}, seed=SEED, log=None)
        method.unlearn(copy.deepcopy(original_model), original_model, unlearn_data(sources, method, SEED), CPU)
        assert len(passes) == expected
        norm = method.teacher.backbone.features[1]
        assert norm.momentum == 0.1
