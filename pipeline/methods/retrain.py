"""retrain: the gold standard. Fresh weights trained on D_r with the original recipe (also trains the original)."""

import torch.nn.functional as F

from pipeline.methods.base import UnlearningMethod, to_device


class Retrain(UnlearningMethod):
    name = "retrain"
    summary = "gold standard: train from scratch on D_r with the original training recipe"
    # Plain training: the running BatchNorm statistics have many epochs to settle, no refresh needed.
    defaults = {"epochs": 15, "lr": 1e-3, "batch_size": 64, "optimizer": "adam", "weight_decay": 0.0,
                "batchnorm_refresh_batches": 0}
    def prepare(self, model, data, device):
        reset_weights(model, self.seed)

    def loss(self, model, batch, device):
        images, labels = to_device(batch, device)
        return F.cross_entropy(model(images), labels)


def reset_weights(model, seed: int) -> None:
    """Re-draw every layer's weights from its own initialiser, identically on every worker (same seed)."""
    import torch

    torch.manual_seed(seed)
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
