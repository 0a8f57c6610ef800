"""A resumed run equals the uninterrupted one, to the bit: in process for every multi-epoch method, and through
Ray Train with a worker killed mid-run."""

import copy

import pytest
import torch

from pipeline.methods import create_method
from pipeline.methods.harness import unlearn_data
from tests.conftest import CPU, FORGET_SPEC, SEED

# (method, settings): three epochs each, checkpointed after the second. One method per kind of state to restore:
# torch's global generator (LoTUS's Gumbel noise), a method's own generator (random labels), per-epoch attributes
# (UNSIR's phase and noise cursor). LoTUS at alpha 2 does not stop early here.
METHODS = [("lotus", {"epochs": 3, "alpha": 2}), ("randlabel", {"epochs": 3}), ("unsir", {"epochs": 3})]


def _unlearn(method, model, original, sources, on_epoch_end=None, resume=None):
    torch.manual_seed(SEED)  # as the Ray loop does before every method
    return method.unlearn(model, original, unlearn_data(sources, method, SEED), CPU, on_epoch_end=on_epoch_end,
                          resume=resume)


@pytest.mark.parametrize("name,config", METHODS, ids=[name for name, _ in METHODS])
def test_a_run_resumed_from_its_epoch_checkpoint_ends_with_the_same_weights(name, config, digits_hard, original_model):
    sources, _ = digits_hard
    original = copy.deepcopy(original_model)
    method, saved = create_method(name, config, seed=SEED, log=None), {}

    def checkpoint_after_second_epoch(epoch, model, entry):
        if epoch == 1:  # what the Ray loop writes at the end of an epoch (pipeline/train/loop.py)
            saved.update(epoch=epoch, model=copy.deepcopy(model.state_dict()),
                         optimizer=copy.deepcopy(method.optimizer.state_dict()),
                         method_state=copy.deepcopy(method.resume_state()))

    uninterrupted = copy.deepcopy(original_model)
    report = _unlearn(method, uninterrupted, original, sources, on_epoch_end=checkpoint_after_second_epoch)
    assert report.epochs_run == 3 and saved, f"{name} ran {report.epochs_run} epochs"

    resumed = copy.deepcopy(original_model)  # a restarted worker starts from the original, then loads the checkpoint
    report = _unlearn(create_method(name, config, seed=SEED, log=None), resumed, original, sources, resume=saved)
    assert report.epochs_run == 1
    different = [key for key, value in uninterrupted.state_dict().items()
                 if not torch.equal(value, resumed.state_dict()[key])]
    assert not different, f"{name}: resumed run differs in {different[:3]}"
