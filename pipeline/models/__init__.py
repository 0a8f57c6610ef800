"""Model builders by name, checkpoints, and the input normalisation every model carries.

Names: `cnn` (small CNN for 8x8/32x32 inputs), torchvision models as
`torchvision:NAME` (`vit_b_16` and `resnet50` are aliases for those), anything
else is a timm name (`resnet18`, `vit_tiny_patch16_224`, ...). No weights are
ever downloaded: `weights` is a local or s3:// file the user provides.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from pipeline import storage
from pipeline.distributed import unwrap
from pipeline.errors import ConfigError, DataError

TORCHVISION_ALIASES = {"vit_b_16": "torchvision:vit_b_16", "resnet50": "torchvision:resnet50"}


@dataclass
class ModelSpec:
    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.25])


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks (32/64/128/256 channels), pooling while the map is at least 2x2, then a linear head."""

    def __init__(self, num_classes: int, in_chans: int, image_size: int, widths=(32, 64, 128, 256)):
        super().__init__()
        layers, channels, size = [], in_chans, image_size
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


class Classifier(nn.Module):
    """Backbone plus the input convention of the whole project: uint8 or [0, 1] images in, logits out."""

    def __init__(self, backbone: nn.Module, mean, std, backbone_channels: int):
        super().__init__()
        self.backbone = backbone
        self.backbone_channels = backbone_channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        x = (x - self.mean) / self.std
        if x.shape[1] != self.backbone_channels:  # grey data into an RGB backbone
            x = x.expand(-1, self.backbone_channels, -1, -1)
        return self.backbone(x)


def _timm_model(name: str, spec: ModelSpec) -> tuple[nn.Module, int]:
    import timm

    try:
        kwargs = {"pretrained": False, "num_classes": spec.num_classes, "in_chans": spec.channels}
        if name.startswith(("vit_", "deit_", "swin")):
            kwargs["img_size"] = spec.image_size
        model = timm.create_model(name, **kwargs)
    except RuntimeError as exc:
        raise ConfigError(f"unknown model {name!r}: {exc}") from exc
    if name.startswith("resnet") and spec.image_size <= 64 and hasattr(model, "conv1"):
        # CIFAR-style stem: a 7x7/2 conv plus max-pool would shrink 32x32 inputs to 8x8 before the first block.
        model.conv1 = nn.Conv2d(spec.channels, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    return model, spec.channels


def _torchvision_model(name: str, spec: ModelSpec) -> tuple[nn.Module, int]:
    import torchvision

    try:
        kwargs = {"weights": None, "num_classes": spec.num_classes}
        if name.startswith("vit_"):
            kwargs["image_size"] = spec.image_size
        return torchvision.models.get_model(name, **kwargs), 3
    except ValueError as exc:
        raise ConfigError(f"unknown torchvision model {name!r}: {exc}") from exc


def build_model(spec: ModelSpec) -> Classifier:
    name = TORCHVISION_ALIASES.get(spec.name, spec.name)
    if name == "cnn":
        backbone, channels = SmallCNN(spec.num_classes, spec.channels, spec.image_size), spec.channels
    elif name.startswith("torchvision:"):
        backbone, channels = _torchvision_model(name.split(":", 1)[1], spec)
    else:
        backbone, channels = _timm_model(name, spec)
    mean = (list(spec.mean) * channels)[:channels] if len(spec.mean) != channels else spec.mean
    std = (list(spec.std) * channels)[:channels] if len(spec.std) != channels else spec.std
    return Classifier(backbone, mean, std, channels)


def read_checkpoint(uri: str) -> dict:
    """A torch file's contents, read with weights_only=True (a .safetensors file, as timm's hub files are, by
    safetensors); a clear DataError for a file that is not one."""
    data = storage.read_bytes(uri)
    if not data:
        raise DataError(f"cannot load weights from {uri}: the file is empty")
    if uri.lower().endswith(".safetensors"):
        return _read_safetensors(uri, data)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises anything from IndexError to UnpicklingError on a file that is not its own
        first_sentence = str(exc).split(". ")[0].splitlines()[0] if str(exc) else "no detail"
        raise DataError(f"cannot load weights from {uri}: not a PyTorch checkpoint ({type(exc).__name__}: "
                        f"{first_sentence})") from exc


def _read_safetensors(uri: str, data: bytes) -> dict:
    try:
        from safetensors.torch import load
    except ImportError as exc:  # timm depends on it, so it is there wherever timm is
        raise DataError(f"cannot load {uri}: reading .safetensors needs the safetensors package") from exc
    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError (and others) on a damaged header
        raise DataError(f"cannot load weights from {uri}: not a safetensors file ({exc})") from exc


# Where training scripts keep the model's weights beside optimizer state, epochs and the like (timm's train.py and
# many others: `state_dict`; others `model` or `model_state_dict`).
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")


def plain_state_dict(state, uri: str) -> dict:
    """The backbone state dict a weights file holds: the file itself (torchvision's and timm's release files), or
    the dict under a training script's key (WRAPPER_KEYS), with the `module.` prefix DDP adds removed."""
    if not isinstance(state, dict):
        raise DataError(f"{uri} holds a {type(state).__name__}, not a state dict (name -> tensor)")
    if not all(isinstance(value, torch.Tensor) for value in state.values()):
        nested = [key for key in WRAPPER_KEYS if isinstance(state.get(key), dict)]
        if not nested:
            raise DataError(f"{uri} is not a state dict (name -> tensor) and has none under "
                            f"{', '.join(WRAPPER_KEYS)}; its keys: {', '.join(map(str, list(state)[:10]))}")
        state = state[nested[0]]
    if state and all(str(key).startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def load_weights(model: Classifier, uri: str) -> None:
    """Load a project checkpoint or a plain backbone state dict (e.g. torchvision's official ImageNet weights,
    timm's .safetensors, a training script's file with the weights under `state_dict`)."""
    state = read_checkpoint(uri)
    if isinstance(state, dict) and "state_dict" in state and "spec" in state:
        model.load_state_dict(state["state_dict"])
        return
    try:
        model.backbone.load_state_dict(plain_state_dict(state, uri))
    except RuntimeError as exc:
        raise DataError(f"weights in {uri} do not fit this model: {str(exc)[:500]}") from exc


def spec_for_data(name: str, meta, image_size: int | None = None, mean: list[float] | None = None,
                  std: list[float] | None = None) -> ModelSpec:
    """The ModelSpec of model `name` for a dataset's meta (classes, channels, input size and normalisation), each
    overridable; the normalisation a training run on that data would give it."""
    return ModelSpec(name=name, num_classes=meta.num_classes, channels=meta.channels,
                     image_size=int(image_size or meta.height), mean=list(mean or meta.mean or [0.5]),
                     std=list(std or meta.std or [0.25]))


def checkpoint_from_weights(spec: ModelSpec, weights: str, out: str) -> str:
    """A raw weights file (a backbone's state dict: torchvision's vit_b_16 ImageNet file, timm's) written as the
    checkpoint `run`, `forget` and `eval` take: the model `spec` describes with every weight loaded (any missing,
    unexpected or misshapen key is a DataError), written atomically with its spec. Returns the file's sha256."""
    network = build_model(spec)
    load_weights(network, weights)
    return save_checkpoint(network, spec, out, extra={"weights": weights})


def write_checkpoint(model: nn.Module, uri: str, **fields) -> str:
    """Write {state_dict (the plain module's, on the CPU), **fields} atomically; return the sha256 of the bytes."""
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"state_dict": state, **fields}, buffer)
    data = buffer.getvalue()
    storage.write_bytes(uri, data)
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(model: nn.Module, spec: ModelSpec, uri: str, extra: dict | None = None) -> str:
    """Write {state_dict, spec, extra} atomically; return the sha256 of the bytes written."""
    return write_checkpoint(model, uri, spec=asdict(spec), extra=extra or {})


def load_checkpoint(uri: str) -> tuple[Classifier, ModelSpec, dict]:
    state = read_checkpoint(uri)
    if not isinstance(state, dict) or "spec" not in state or "state_dict" not in state:
        raise DataError(f"{uri} is not a checkpoint written by this project (no spec/state_dict)")
    spec = ModelSpec(**state["spec"])
    model = build_model(spec)
    model.load_state_dict(state["state_dict"])
    return model, spec, state.get("extra", {})
