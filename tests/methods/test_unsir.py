"""UNSIR: error-maximising noise per forget class, impair with it, repair on D_r (its defaults at three forget
settings: test_defaults.py)."""

import torch
import torch.nn.functional as F

from pipeline.methods import create_method
from pipeline.methods.harness import unlearn_data
from tests.conftest import CPU, SEED


def test_unsir_noise_maximises_the_error_for_each_forget_class(digits_hard, original_model):
    sources = digits_hard[0]
    method = create_method("unsir", seed=SEED, log=None)
    method.prepare(original_model, unlearn_data(sources, method, SEED), CPU)
    noise, labels = method.noise_images, method.noise_labels

    forget_classes = sorted(set(sources["forget"].labels.tolist()))
    assert sorted(set(labels.tolist())) == forget_classes
    assert len(labels) == method.config["noise_per_class"] * len(forget_classes)
    assert noise.shape[1:] == sources["forget"].images.shape[1:]
    assert 0.0 <= float(noise.min()) and float(noise.max()) <= 1.0

    original_model.eval()
    with torch.no_grad():
        start = torch.rand(noise.shape, generator=torch.Generator().manual_seed(0))
        loss_on_random = F.cross_entropy(original_model(start), labels)
        loss_on_noise = F.cross_entropy(original_model(noise), labels)
        predicted_as_own_class = (original_model(noise).argmax(1) == labels).float().mean()
    assert loss_on_noise > loss_on_random + 5.0, f"{loss_on_random:.2f} -> {loss_on_noise:.2f}"
    assert predicted_as_own_class == 0.0
