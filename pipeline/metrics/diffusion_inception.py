"""Real FID for users who have Inception weights: torchvision's inception_v3 built with `weights=None`, its state
dict loaded from a local file (`--inception-weights FILE`, read with weights_only=True). Nothing is downloaded."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline import storage
from pipeline.errors import DataError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class InceptionFeatures:
    """2048-d pool features of [0, 1] images (grey repeated to RGB, resized to 299x299)."""

    def __init__(self, weights_uri: str, device: torch.device | None = None, batch_size: int = 64):
        import io

        import torchvision

        if not storage.exists(weights_uri):
            raise DataError(f"--inception-weights {weights_uri}: no such file")
        try:
            state = torch.load(io.BytesIO(storage.read_bytes(weights_uri)), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DataError(f"--inception-weights {weights_uri}: not a PyTorch state dict ({type(exc).__name__})") from exc
        model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as exc:
            raise DataError(f"--inception-weights {weights_uri} does not fit torchvision's inception_v3: "
                            f"{str(exc)[:300]}") from exc
        model.fc = torch.nn.Identity()
        self.device = device or torch.device("cpu")
        self.model, self.batch_size = model.eval().to(self.device), batch_size
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor):
        out = []
        for start in range(0, len(pixels), self.batch_size):
            x = pixels[start:start + self.batch_size].to(self.device).float()
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            out.append(self.model((x - self.mean) / self.std).cpu())
        return torch.cat(out).numpy()
