"""Digits for the DDPM: upsampled images (in-process), and the paired forget/retain batches the methods train on.

The shards hold 8x8 digits. Both the DDPM and the metrics classifier work at `image_size` (16 by default):
in-process, `upsample` resizes the decoded uint8 batches; through Ray, the data plan decodes straight to that
size. Both use torchvision's antialiased resize of uint8 images, so they give the same pixels.
"""

from __future__ import annotations

import itertools
from typing import Iterator

import numpy as np
import torch
import torchvision.transforms.functional as tvf

from pipeline.data.sources import TensorSource


def upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return tvf.resize(images, [size, size], antialias=True)


def upsampled(source: TensorSource, size: int) -> TensorSource:
    return TensorSource(upsample(source.images, size), source.labels, source.sample_ids, source.is_forget)


def load_diffusion_sources(uri: str, forget_class: int, seed: int, image_size: int,
                           verify: bool = True) -> dict[str, TensorSource]:
    """{forget, retain, train, unseen, test} at `image_size`, D_f = every training image of `forget_class`."""
    from pipeline.data.local import load_sources

    sources, _ = load_sources(uri, spec=f"class:{forget_class}", seed=seed, verify=verify)
    return {name: upsampled(source, image_size) for name, source in sources.items()}


class PairedSource:
    """Every batch = `retain_batch` samples of D_r + `forget_batch` samples of D_f (cycled), flagged `is_forget`.

    Why not the mixed set's natural batches: a class is a tenth of digits, so a plain shuffled batch of 64 holds
    about 6 forget samples and the forget term's gradient is noise. `steps_per_epoch` > 0 fixes the steps an
    epoch takes (D_r cycles too); 0 means one pass over D_r.
    """

    def __init__(self, forget, retain, forget_batch: int, steps_per_epoch: int = 0):
        self.forget, self.retain = forget, retain
        self.forget_batch, self.steps_per_epoch = forget_batch, steps_per_epoch

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> Iterator[dict]:
        retain = self._retain_batches(batch_size, shuffle, seed)
        forget = _cycle(self.forget, self.forget_batch, shuffle, seed + 7919)
        for retain_batch in retain:
            forget_batch = next(forget, None)
            yield _join(forget_batch, retain_batch) if forget_batch is not None else _flag(retain_batch, False)

    def _retain_batches(self, batch_size: int, shuffle: bool, seed: int):
        if self.steps_per_epoch <= 0:
            return self.retain.batches(batch_size, shuffle=shuffle, seed=seed)
        return itertools.islice(_cycle(self.retain, batch_size, shuffle, seed), self.steps_per_epoch)


def _cycle(source, batch_size: int, shuffle: bool, seed: int) -> Iterator[dict]:
    """Endless batches of `source`, a new shuffle every pass; empty if the source (this worker's share) is."""
    for repeat in itertools.count():
        empty = True
        for batch in source.batches(batch_size, shuffle=shuffle, seed=seed + 104729 * repeat):
            empty = False
            yield batch
        if empty:
            return


def _flag(batch: dict, value: bool) -> dict:
    return {**batch, "is_forget": torch.full((len(batch["label"]),), value, dtype=torch.bool)}


def _join(forget: dict, retain: dict) -> dict:
    forget, retain = _flag(forget, True), _flag(retain, False)
    return {"image": torch.cat([forget["image"], retain["image"]]), "label": torch.cat([forget["label"], retain["label"]]),
            "is_forget": torch.cat([forget["is_forget"], retain["is_forget"]]),
            "sample_id": np.concatenate([np.asarray(forget["sample_id"]), np.asarray(retain["sample_id"])])}
