"""finetune: keep training the original on D_r only, relying on catastrophic forgetting of D_f.

The defaults (SGD) suit a model trained with SGD. A model that memorised D_f has ~0 loss on D_r, so SGD's
steps vanish and nothing is forgotten; for a model trained with Adam, continue with Adam at a few times its
training rate (the digits configs: adam, lr 3e-3, 3 epochs), whose normalised steps keep moving the weights.
"""

import torch.nn.functional as F

from pipeline.methods.base import UnlearningMethod, to_device


class Finetune(UnlearningMethod):
    name = "finetune"
    summary = "train on D_r only (SGD, lr 1e-3, momentum 0.9)"
    defaults = {"epochs": 10, "lr": 1e-3, "batch_size": 64, "optimizer": "sgd", "momentum": 0.9}

    def loss(self, model, batch, device):
        images, labels = to_device(batch, device)
        return F.cross_entropy(model(images), labels)
