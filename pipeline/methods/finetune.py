"""finetune: keep training the original on D_r only, relying on catastrophic forgetting of D_f.

Defaults: Adam, lr 3e-3, 3 epochs: the original's own optimiser (the training recipe is Adam at lr 1e-3) at three
times its rate. The usual SGD defaults (lr 1e-3, momentum 0.9, 10 epochs) forget nothing here: a model that
memorised D_f has ~0 loss on D_r, so SGD's steps vanish (0 of |D_f| flipped on every original at random 10 %,
random 30 % and one class), while Adam's normalised steps keep moving the weights along D_r's tiny gradients and
the memorised D_f drifts away. On originals 0-2: random 10 % forget 0.84-0.88 at test -0.05..-0.01, random 30 %
0.84-0.85 at -0.09..-0.01, class 3 0.00 at the other classes' -0.01..+0.02 (benchmarks/method_margins.py).
For a model trained with SGD, `--set finetune.optimizer=sgd --set finetune.lr=...`.
"""

import torch.nn.functional as F

from pipeline.methods.base import UnlearningMethod, to_device


class Finetune(UnlearningMethod):
    name = "finetune"
    summary = "train on D_r only (Adam, lr 3e-3, 3 epochs)"
    defaults = {"epochs": 3, "lr": 3e-3, "batch_size": 64, "optimizer": "adam", "momentum": 0.9}

    def loss(self, model, batch, device):
        images, labels = to_device(batch, device)
        return F.cross_entropy(model(images), labels)
