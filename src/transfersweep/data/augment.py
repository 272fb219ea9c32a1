"""Training-time augmentation (`data.augment=true`): timm's own train transform.

The transform is `timm.data.create_transform(is_training=True)` with the `data.aug` settings
(random-resized-crop, flips, RandAugment or colour jitter), less its ToTensor/Normalize:
mean/std run on the device as for every batch (`batches.Preprocess`).

Where it runs: on the host, image by image, on each training batch gathered from the uint8
cache, before the batch moves to the device. The cache holds every image already resized and
centre-cropped to the model's input size (`model_input`), so the random crop is taken from
that cached view, not from the original file as timm's own loader would: the price of
decoding each image once (for data sets the size of a few-shot target, a small one; crops
stay inside what evaluation sees).

Reproducible: each batch's augmentation draws from a seed taken from the batches' own
generator (`Batches.gen`, which resume saves), with Python's, NumPy's and torch's global
generators (timm's ops use all three) seeded for that batch and restored afterwards, so a
resumed run augments exactly as an uninterrupted one and nothing else's randomness moves.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from transfersweep.data.model_input import through_pil

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from transfersweep.data.model_input import ModelInput


class TrainAugment:
    """uint8 (B, 3, S, S) -> uint8 (B, 3, S, S), each image through timm's train transform."""

    def __init__(self, mi: ModelInput, aug: DictConfig):
        from timm.data import create_transform
        from torchvision import transforms

        primary, secondary, _final = create_transform(
            input_size=(3, mi.size, mi.size),
            is_training=True,
            scale=tuple(aug.scale),
            ratio=tuple(aug.ratio),
            hflip=float(aug.hflip),
            color_jitter=float(aug.color_jitter),
            auto_augment=aug.auto_augment or None,
            interpolation=mi.interpolation,
            mean=mi.mean,
            std=mi.std,
            separate=True,
        )
        for t in secondary.transforms:
            _mend_posterize(t)
        self.transform = transforms.Compose([*primary.transforms, *secondary.transforms])

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        with _seeded(seed):
            return through_pil(x, self.transform, x.shape[-1])

    def __repr__(self) -> str:
        return f"TrainAugment({self.transform})"


def _mend_posterize(policy: object) -> None:
    """timm 1.0's RandAugment / AutoAugment can ask Pillow to posterize to 0 bits (`inc1`
    policies at magnitude 10, plain ones below 2.5); Pillow 11+ raises on that where older
    Pillow returned a black image. Give its posterize ops that old result instead, so a
    sampled magnitude cannot stop a training run."""
    ops = list(getattr(policy, "ops", []))
    for sub in getattr(policy, "policy", []):  # AutoAugment: a list of sub-policies
        ops += list(sub)
    for op in ops:
        if "Posterize" in getattr(op, "name", ""):
            op.aug_fn = _posterize


def _posterize(img, bits_to_keep: int, **kwargs):
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)  # what keeping 0 bits meant in Pillow < 11
    return ImageOps.posterize(img, bits_to_keep)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Python's, NumPy's and torch's CPU generators seeded with `seed` inside, restored after."""
    py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(th)


def of(cfg: DictConfig, mi: ModelInput) -> TrainAugment | None:
    """The run's training augmentation, or None when data.augment is off."""
    return TrainAugment(mi, cfg.data.aug) if cfg.data.augment else None
