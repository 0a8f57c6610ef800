"""A PNG grid of samples: one block per model (before/after), a row per class, `per_class` samples a row."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipeline import storage
from pipeline.models.diffusion import to_pixels
from pipeline.models.diffusion_process import SamplingPlan, generate

SCALE, GAP, LABEL_HEIGHT = 3, 6, 14


def model_block(model, num_classes: int, plan: SamplingPlan, device) -> np.ndarray:
    """uint8 [rows, cols] mosaic: row c holds `plan.per_class` samples of class c (the same noise for every model)."""
    samples, _ = generate(model, range(num_classes), plan, device)
    pixels = (to_pixels(samples)[:, 0] * 255).round().to(torch.uint8).numpy()  # first channel: digits are grey
    size = pixels.shape[-1]
    rows = pixels.reshape(num_classes, plan.per_class, size, size)
    return np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)


def sample_grid_png(models: dict, num_classes: int, plan: SamplingPlan, device) -> bytes:
    """Blocks side by side, each titled with its model's name; PNG bytes."""
    blocks = {name: model_block(model, num_classes, plan, device) for name, model in models.items()}
    height = max(block.shape[0] for block in blocks.values()) * SCALE + LABEL_HEIGHT
    width = sum(block.shape[1] * SCALE + GAP for block in blocks.values()) - GAP
    canvas = Image.new("L", (width, height), color=128)
    draw = ImageDraw.Draw(canvas)
    left = 0
    for name, block in blocks.items():
        image = Image.fromarray(block).resize((block.shape[1] * SCALE, block.shape[0] * SCALE), Image.NEAREST)
        canvas.paste(image, (left, LABEL_HEIGHT))
        draw.text((left + 2, 1), name, fill=255)
        left += image.width + GAP
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def write_sample_grid(uri: str, models: dict, num_classes: int, plan: SamplingPlan, device) -> str:
    storage.write_bytes(uri, sample_grid_png(models, num_classes, plan, device))
    return uri
