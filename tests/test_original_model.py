"""digits-hard is a benchmark where unlearning is measurable: the original memorises its training set."""

from pipeline.methods.accuracy import accuracy
from tests.conftest import CPU


def test_original_memorises_forget_set_beyond_unseen_accuracy(digits_hard, original_model):
    sources, _ = digits_hard
    forget_accuracy = accuracy(original_model, sources["forget"], CPU)
    unseen_accuracy = accuracy(original_model, sources["unseen"], CPU)
    assert forget_accuracy - unseen_accuracy >= 0.10, (forget_accuracy, unseen_accuracy)
