"""Batches of uint8 images, and their preprocessing on the training device.

`Batches` draws index batches itself (seeded) and gathers them from memory,
which for small in-memory sets is far cheaper than a per-sample DataLoader;
on-disk sets go through a DataLoader with workers and the same index batches.
`Preprocess` turns uint8 batches into normalised floats on the device, so the host only
moves bytes; on a GPU, an in-memory set that fits is copied to the device once (`resident`)
and its batches are gathered there, so no byte crosses per batch. Training batches may pass
through timm's train transform first (`data.augment`, `augment.TrainAugment`), on the host,
seeded from the batches' generator.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from transfersweep.data.images import FileImages, ImageSet, TensorImages
from transfersweep.data.model_input import ModelInput

if TYPE_CHECKING:
    from transfersweep.data.augment import TrainAugment


class Batches:
    """Iterate (uint8 images, labels) over `images`.

    shuffle=True draws a new order each epoch from a seeded generator.
    `target_share` (joint training) with `n_target` makes each batch hold that
    share of the first `n_target` items (the target set), drawn cyclically, the
    rest from the others; the epoch length stays len(images) items.
    `augment` (training batches, data.augment) transforms each gathered uint8 batch with a
    seed drawn from the same generator, so the data order and the augmentation resume alike.
    `balanced` (data.*.balance=sampler) draws each epoch's len(images) items with replacement,
    each with probability 1 / (classes x its class's count): every class equally likely.
    `device` (a GPU): in-memory images without host augmentation are gathered on it
    (`resident`); the order is still drawn on the host, from the same generator. Other
    batches are pinned there, for asynchronous copies.
    """

    def __init__(
        self,
        images: ImageSet,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        num_workers: int = 0,
        n_target: int | None = None,
        target_share: float | None = None,
        augment: TrainAugment | None = None,
        balanced: bool = False,
        device: torch.device | None = None,
    ):
        self.images, self.batch_size, self.shuffle = images, batch_size, shuffle
        self.device = device
        self.on_device = resident(images, device) if augment is None else None
        self.balanced = balanced
        self.augment = augment
        self.gen = torch.Generator().manual_seed(seed)
        self.num_workers = num_workers
        # batches that cross to a GPU per step: pinned, for asynchronous copies
        self.pin_memory = device is not None and device.type == "cuda" and self.on_device is None
        self.n_target, self.target_share = n_target, target_share

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def index_batches(self) -> list[torch.Tensor]:
        n = len(self.images)
        if self.target_share is not None and self.n_target:
            return self._joint_batches(n)
        if self.balanced:  # each item drawn in proportion to its class's weight
            labels = self.images.labels
            weights = _balanced(labels, 0)[labels]
            order = torch.multinomial(weights, n, True, generator=self.gen)
        elif self.shuffle:
            order = torch.randperm(n, generator=self.gen)
        else:
            order = torch.arange(n)
        batches = list(order.split(self.batch_size))
        if self.shuffle and len(batches) > 1 and len(batches[-1]) == 1:
            batches[-2:] = [torch.cat(batches[-2:])]  # BatchNorm cannot train on a batch of one
        return batches

    def _joint_batches(self, n: int) -> list[torch.Tensor]:
        nt, ns = self.n_target, n - self.n_target
        per_t = max(1, round(self.batch_size * self.target_share))
        per_s = self.batch_size - per_t
        n_batches = len(self)
        t = _cycle(torch.randperm(nt, generator=self.gen), n_batches * per_t, self.gen)
        s = _cycle(torch.randperm(ns, generator=self.gen) + nt, n_batches * per_s, self.gen)
        return [
            torch.cat([t[i * per_t : (i + 1) * per_t], s[i * per_s : (i + 1) * per_s]])
            for i in range(n_batches)
        ]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.index_batches()
        if self.augment is None:
            yield from self._gather(batches, self.pin_memory)
            return
        seeds = torch.randint(0, 2**31 - 1, (len(batches),), generator=self.gen).tolist()
        for (x, y), seed in zip(self._gather(batches, pin=False), seeds, strict=True):
            x = self.augment(x, seed)  # a new tensor: pinned once, after the transform
            yield (x.pin_memory(), y.pin_memory()) if self.pin_memory else (x, y)

    def _gather(
        self, batches: list[torch.Tensor], pin: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.on_device is not None:
            images, labels = self.on_device
            for b in batches:
                b = b.to(images.device, non_blocking=True)
                yield images[b], labels[b]
            return
        if isinstance(self.images, FileImages):
            loader = torch.utils.data.DataLoader(
                self.images,
                batch_sampler=[b.tolist() for b in batches],
                num_workers=self.num_workers,
                pin_memory=pin,
                persistent_workers=False,
            )
            for b, x in zip(batches, loader, strict=True):
                yield x, self.images.labels[b]
            return
        for b in batches:
            x, y = self.images.batch(b), self.images.labels[b]
            if pin:
                x, y = x.pin_memory(), y.pin_memory()
            yield x, y


# Device copies of in-memory images, by the host tensor (weak: they go with their set)
_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
RESIDENT_SHARE = 0.25  # of the GPU's free memory, at most, for one set's bytes


def resident(
    images: ImageSet, device: torch.device | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(images, labels) on `device` when it is a GPU and `images` is an in-memory set whose
    bytes fit in RESIDENT_SHARE of its free memory: copied once per set (reused by every
    phase and epoch that batches it), None otherwise (batches then cross per step, pinned)."""
    if device is None or device.type != "cuda" or not isinstance(images, TensorImages):
        return None
    host = images.images
    if host.device == device:  # made there (features): not kept in _COPIES, which would keep
        return host, images.labels.to(device)  # the set alive; labels are a few bytes
    if host not in _COPIES:
        free, _ = torch.cuda.mem_get_info(device)
        if host.numel() * host.element_size() > RESIDENT_SHARE * free:
            return None
        _COPIES[host] = (host.to(device), images.labels.to(device))
    return _COPIES[host]


def _balanced(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """n / (classes present x count) per class, in float64 (0 for an absent class): every
    class's items weigh the same in total."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    present = int((counts > 0).sum())
    return torch.where(counts > 0, len(labels) / (present * counts.clamp(min=1)), 0.0)


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The cross-entropy's class weights (scikit-learn's "balanced"; 0 for an absent class)."""
    return _balanced(labels, num_classes).float()


def _cycle(order: torch.Tensor, length: int, gen: torch.Generator) -> torch.Tensor:
    """`length` items: `order`, then fresh permutations of it, repeated as needed."""
    reps = [order]
    while sum(len(r) for r in reps) < length:
        reps.append(order[torch.randperm(len(order), generator=gen)])
    return torch.cat(reps)[:length]


class Preprocess(torch.nn.Module):
    """uint8 (B,3,S,S) -> normalised float on the device (timm's mean/std for the backbone)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255)

    @classmethod
    def of(cls, mi: ModelInput) -> Preprocess:
        """The mean/std of the backbone's timm data config (data.model_input)."""
        return cls(mi.mean, mi.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std
