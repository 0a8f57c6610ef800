"""NegGrad+: the forget term is ascended (its defaults at three forget settings: test_defaults.py)."""

import torch
import torch.nn.functional as F

from pipeline.methods import create_method
from tests.methods.helpers import run_method


@torch.no_grad()
def forget_cross_entropy(model, forget):
    model.eval()
    batches = list(forget.batches(256))
    return sum(F.cross_entropy(model(b["image"]), b["label"], reduction="sum").item() for b in batches) / sum(
        len(b["label"]) for b in batches)


def test_neggrad_ascends_the_forget_loss(digits_hard, original_model):
    sources = digits_hard[0]
    loss_before = forget_cross_entropy(original_model, sources["forget"])
    run_method("neggrad", original_model, sources, original=None)
    loss_after = forget_cross_entropy(original_model, sources["forget"])
    # The ascent must ascend: CE on D_f rises well above the original's (~0.005 on a memorised set); at the
    # defaults it ended at 0.09-0.14 on originals 0-2.
    assert loss_after > loss_before + 0.05, f"forget CE {loss_before:.4f} -> {loss_after:.4f}"


def test_neggrad_forget_term_is_ascended():
    # One mixed batch: the forget term enters the minimised loss with a minus sign.
    torch.manual_seed(0)
    method = create_method("neggrad", {"beta": 0.75}, log=None)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    batch = {"image": torch.randn(4, 1, 2, 2), "label": torch.tensor([0, 1, 2, 0]),
             "is_forget": torch.tensor([True, False, False, True])}
    logits = model(batch["image"])
    retain_ce = F.cross_entropy(logits[[1, 2]], batch["label"][[1, 2]])
    forget_ce = F.cross_entropy(logits[[0, 3]], batch["label"][[0, 3]])
    expected = 0.75 * retain_ce - 0.25 * forget_ce
    assert torch.allclose(method.loss(model, batch, torch.device("cpu")), expected, atol=1e-6)
