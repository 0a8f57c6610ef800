"""neggrad: NegGrad+ (Kurmanji et al., 2023). Minimise β·CE(D_r) − (1−β)·CE(D_f) on batches that mix both sets.

The forget term is subtracted from the loss that is minimised, so its gradient is
ascended. (A known public implementation negates `param.grad` *before* calling
`backward()`, which flips nothing and so only descends on D_f.)
"""

import torch
import torch.nn.functional as F

from pipeline.methods.base import UnlearningMethod, to_device


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask`; 0 (still in the graph) when a batch holds no such sample."""
    return values[mask].sum() / mask.sum().clamp(min=1)


class NegGradPlus(UnlearningMethod):
    name = "neggrad"
    summary = "NegGrad+: minimise β·CE(D_r) − (1−β)·CE(D_f) on batches mixing D_f and D_r"
    # The paper tunes β in [0.95, 0.9999] with SGD; LoTUS's reference runs SGD lr 1e-3, momentum 0.9. On a
    # memorised forget set the CE gradient is ~0 (p(y|x) ≈ 1), so SGD either does nothing or, once the ascent
    # gets going, runs away (digits-hard, lr 1e-2: β 0.7 leaves forget accuracy at 1.0, β 0.5 collapses the
    # model to chance). Adam normalises the step, so the ascent starts at once and moves at a bounded rate:
    # lr 2e-4, β 0.9, 2 epochs forgets on digits-hard and keeps test accuracy.
    defaults = {"epochs": 2, "lr": 2e-4, "batch_size": 64, "optimizer": "adam", "weight_decay": 0.0, "beta": 0.9}

    def train_source(self, data):
        return data.mixed

    def term_weights(self) -> tuple[float, float]:
        """(weight of the retain term, weight of the forget term) in the loss that is minimised."""
        beta = float(self.config["beta"])
        return beta, 1.0 - beta

    def forget_loss(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Per-sample loss on forget samples; negative cross-entropy, so minimising it ascends CE(D_f)."""
        return -F.cross_entropy(logits, labels, reduction="none")

    def loss(self, model, batch, device):
        images, labels = to_device(batch, device)
        is_forget = batch["is_forget"].to(device)
        logits = model(images)
        retain_weight, forget_weight = self.term_weights()
        retain_term = masked_mean(F.cross_entropy(logits, labels, reduction="none"), ~is_forget)
        forget_term = torch.zeros((), device=device)
        if is_forget.any():
            forget_term = self.forget_loss(logits[is_forget], labels[is_forget], images[is_forget]).mean()
        return retain_weight * retain_term + forget_weight * forget_term
