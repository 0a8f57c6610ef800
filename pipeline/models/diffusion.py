"""A small class-conditional DDPM: a UNet with time and class embeddings, its noise schedule as buffers, and
checkpoints in the project's convention ({state_dict, spec, extra}, written atomically, read with weights_only).

The classifier `ModelSpec` (pipeline/models/__init__.py) cannot describe a UNet (widths, timesteps, schedule), so the
diffusion family has its own `DiffusionSpec`; its checkpoints carry `"family": "diffusion"` and are refused by
`load_diffusion_checkpoint` otherwise, so a classifier checkpoint and a DDPM one are never confused.
The ImageNet/CIFAR-size configuration is a spec change (image_size, channels, widths), not new code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
import torch.nn.functional as F

from pipeline.errors import ConfigError, DataError
from pipeline.models import read_checkpoint, write_checkpoint

FAMILY = "diffusion"


@dataclass
class DiffusionSpec:
    """Everything that fixes a DDPM's shape and its forward process."""

    num_classes: int
    channels: int = 1
    image_size: int = 16
    widths: list[int] = field(default_factory=lambda: [32, 64, 64])  # one resolution level per width
    timesteps: int = 1000
    schedule: str = "cosine"  # "cosine" (Nichol & Dhariwal 2021: better for small images) or "linear" (Ho et al.)
    name: str = "unet"

    def validate(self) -> None:
        if self.num_classes < 2:
            raise ConfigError(f"a class-conditional DDPM needs at least 2 classes, not {self.num_classes}")
        if self.image_size % (2 ** (len(self.widths) - 1)):
            raise ConfigError(f"image_size {self.image_size} must be divisible by 2^{len(self.widths) - 1} "
                              f"for {len(self.widths)} UNet levels")
        if self.schedule not in ("cosine", "linear"):
            raise ConfigError(f"unknown noise schedule {self.schedule!r}: cosine or linear")
        if self.timesteps < 10:
            raise ConfigError(f"timesteps must be at least 10, not {self.timesteps}")


def beta_schedule(kind: str, timesteps: int) -> torch.Tensor:
    if kind == "linear":
        return torch.linspace(1e-4, 0.02, timesteps, dtype=torch.float64) * (1000 / timesteps)
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    cumulative = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
    return (1 - cumulative[1:] / cumulative[:-1]).clamp(max=0.999)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    frequencies = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def _groups(channels: int) -> int:
    return math.gcd(8, channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the (time + class) embedding added in between (no BatchNorm: the
    denoiser sees every noise level in one batch, and GroupNorm needs no running statistics)."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embed = nn.Linear(embed_dim, out_channels)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.embed(embedding)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class ConditionalUNet(nn.Module):
    """ε-prediction UNet: one ResBlock per level down, a middle block, one per level up with skip connections.

    The class embedding has one extra row, `null_class` (= num_classes), the "no condition" token of
    classifier-free guidance. No attention layers: at 16x16 the receptive field of three levels covers the image,
    and attention would double the CPU cost.
    """

    def __init__(self, spec: DiffusionSpec):
        super().__init__()
        spec.validate()
        base = spec.widths[0]
        embed_dim = 4 * base
        self.base = base
        self.time_mlp = nn.Sequential(nn.Linear(base, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.class_embedding = nn.Embedding(spec.num_classes + 1, embed_dim)
        self.stem = nn.Conv2d(spec.channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        channels, skips = base, []
        for width in spec.widths:
            self.down.append(ResBlock(channels, width, embed_dim))
            channels = width
            skips.append(width)
        self.middle = ResBlock(channels, channels, embed_dim)
        self.up = nn.ModuleList()
        for width in reversed(spec.widths):
            self.up.append(ResBlock(channels + skips.pop(), width, embed_dim))
            channels = width
        self.head = nn.Sequential(nn.GroupNorm(_groups(channels), channels), nn.SiLU(),
                                  nn.Conv2d(channels, spec.channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embedding = self.time_mlp(timestep_embedding(t, self.base)) + self.class_embedding(labels)
        h = self.stem(x)
        skips = []
        for level, block in enumerate(self.down):
            if level:
                h = F.avg_pool2d(h, 2)
            h = block(h, embedding)
            skips.append(h)
        h = self.middle(h, embedding)
        for level, block in enumerate(self.up):
            if level:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = block(torch.cat([h, skips.pop()], dim=1), embedding)
        return self.head(h)


class DiffusionModel(nn.Module):
    """The UNet plus its forward process (ᾱ_t as a buffer), so methods and samplers need nothing but the model.

    Images go in and come out in [-1, 1]; `to_model_space` / `to_pixels` convert from and to uint8 / [0, 1].
    """

    def __init__(self, spec: DiffusionSpec):
        super().__init__()
        self.spec = spec
        self.unet = ConditionalUNet(spec)
        betas = beta_schedule(spec.schedule, spec.timesteps)
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, dim=0).float())

    @property
    def num_timesteps(self) -> int:
        return self.spec.timesteps

    @property
    def null_class(self) -> int:
        return self.spec.num_classes

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t, labels)


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] (or float [0, 1]) images to the model's [-1, 1]."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return x * 2 - 1


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Model space to [0, 1] images, clipped (what a classifier or a PNG sees)."""
    return ((x + 1) / 2).clamp(0, 1)


def build_diffusion_model(spec: DiffusionSpec) -> DiffusionModel:
    return DiffusionModel(spec)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_diffusion_checkpoint(model: nn.Module, spec: DiffusionSpec, uri: str, extra: dict | None = None) -> str:
    """Write {state_dict, family, spec, extra} atomically; return the sha256 of the bytes written."""
    return write_checkpoint(model, uri, family=FAMILY, spec=asdict(spec), extra=extra or {})


def load_diffusion_checkpoint(uri: str) -> tuple[DiffusionModel, DiffusionSpec, dict]:
    state = read_checkpoint(uri)
    if not isinstance(state, dict) or state.get("family") != FAMILY:
        raise DataError(f"{uri} is not a diffusion checkpoint written by this project (a classifier checkpoint?)")
    spec = DiffusionSpec(**state["spec"])
    model = build_diffusion_model(spec)
    model.load_state_dict(state["state_dict"])
    return model, spec, state.get("extra", {})
