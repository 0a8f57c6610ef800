"""badteacher: Bad Teaching (Chundawat et al., AAAI 2023).

The student distils from two teachers on batches mixing D_f and D_r: on forget samples
from an incompetent teacher (a randomly initialised model of the same architecture), on
retain samples from the competent one (the frozen original). Loss = KL(teacher ‖ student)
at temperature T, summed over classes and averaged over the batch.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.distributed import unwrap
from pipeline.methods.base import UnlearningMethod, to_device


def incompetent_copy(model: nn.Module, seed: int) -> nn.Module:
    """Same architecture, every layer re-initialised from `seed`, frozen in eval mode.

    The global RNG is forked so that drawing the teacher leaves the caller's random stream untouched.
    """
    teacher = copy.deepcopy(unwrap(model))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in teacher.modules():
            if module is not teacher and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


class BadTeacher(UnlearningMethod):
    name = "badteacher"
    summary = "KL to a random (incompetent) teacher on D_f and to the original (competent) teacher on D_r"
    needs_original = True
    # The paper's recipe (and LoTUS's reference run): Adam lr 1e-4, no weight decay, temperature 1, 1 epoch
    # over D_f plus 30 % of D_r. On digits-hard it does not forget (forget 1.00 once BatchNorm statistics are
    # re-estimated; without that, lagging statistics fake it: forget 0.88 at test 0.44). All of D_r (retain
    # fraction 1) gives 13 steps instead of 5, enough to forget (forget 0.95, test 0.69 with fresh
    # statistics); its eval-mode test accuracy needs that re-estimate too (the base loop's BatchNorm refresh).
    defaults = {"epochs": 1, "lr": 1e-4, "batch_size": 64, "optimizer": "adam", "weight_decay": 0.0,
                "temperature": 1.0, "retain_fraction": 1.0}

    def prepare(self, model, data, device):
        self.incompetent_teacher = incompetent_copy(self.teacher, self.seed).to(device)

    def train_source(self, data):
        return data.mixed

    def loss(self, model, batch, device):
        images, _ = to_device(batch, device)
        is_forget = batch["is_forget"].to(device).unsqueeze(1)
        temperature = float(self.config["temperature"])
        with torch.no_grad():
            competent = F.softmax(self.teacher(images) / temperature, dim=1)
            incompetent = F.softmax(self.incompetent_teacher(images) / temperature, dim=1)
            targets = torch.where(is_forget, incompetent, competent)
        student_log_probs = F.log_softmax(model(images) / temperature, dim=1)
        return F.kl_div(student_log_probs, targets, reduction="batchmean")
