"""Image sets: labelled uint8 images at a fixed size, in memory or read from disk per batch.

Every image is resized and cropped once, as the backbone wants it (`model_input.ModelInput`:
timm's resize + centre crop), when it is decoded. Every set yields uint8 batches of shape
(B, 3, S, S); normalisation and
augmentation happen later, on the training device, on whole batches
(`transfersweep.data.batches.Preprocess`). Keeping the decoded images as uint8
tensors makes small data sets (the usual transfer target) cost one decode.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transfersweep.data.model_input import ModelInput

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageSet:
    """Labels plus a way to fetch a batch of images by index."""

    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> ImageSet:
        raise NotImplementedError

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class TensorImages(ImageSet):
    images: torch.Tensor  # uint8 (N, 3, S, S)
    labels: torch.Tensor

    def subset(self, idx: torch.Tensor) -> TensorImages:
        return TensorImages(self.images[idx], self.labels[idx])

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[idx]


@dataclass
class FileImages(ImageSet, torch.utils.data.Dataset):
    """Images decoded from files on demand (data sets too large for memory)."""

    paths: Sequence[str]
    labels: torch.Tensor
    input: ModelInput

    @property
    def size(self) -> int:
        return self.input.size

    def subset(self, idx: torch.Tensor) -> FileImages:
        return FileImages([self.paths[i] for i in idx.tolist()], self.labels[idx], self.input)

    def __getitem__(self, i: int) -> torch.Tensor:
        return decode(self.paths[i], self.input)

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.stack([self[i] for i in idx.tolist()])


def concat(a: ImageSet, b: ImageSet, b_label_offset: int) -> ImageSet:
    labels = torch.cat([a.labels, b.labels + b_label_offset])
    if isinstance(a, TensorImages) and isinstance(b, TensorImages):
        return TensorImages(torch.cat([a.images, b.images]), labels)
    if isinstance(a, FileImages) and isinstance(b, FileImages) and a.input == b.input:
        return FileImages(list(a.paths) + list(b.paths), labels, a.input)
    raise TypeError("joint training needs source and target both in memory or both on disk")


def decode(path: str, mi: ModelInput) -> torch.Tensor:
    """Read an image as RGB, resized and centre-cropped as the backbone wants (timm's transform)."""
    from PIL import Image

    with Image.open(path) as im:
        return mi.pil(im)


def to_rgb_uint8(
    images: torch.Tensor | np.ndarray, mi: ModelInput, channels_last: bool = False
) -> torch.Tensor:
    """(N,H,W) / (N,H,W,C) / (N,C,H,W) uint8 arrays -> uint8 (N,3,size,size), each image
    resized and cropped as a decoded file would be."""
    x = torch.as_tensor(np.asarray(images))
    if x.ndim == 3:
        x = x[:, None]
    elif channels_last:
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {x.dtype}")
    return mi.arrays(x)


def materialize(files: FileImages, budget_mb: int, num_workers: int) -> tuple[ImageSet, int]:
    """Decode every file once into memory if the set fits `budget_mb`; else keep it lazy.

    Unreadable files are skipped either way (returned as a count): a broken JPEG
    among thousands should not stop a sweep. The caller reports the count.
    """
    need_mb = len(files) * 3 * files.size * files.size / 2**20
    loader = torch.utils.data.DataLoader(
        _SafeDecode(files), batch_size=64, num_workers=num_workers, collate_fn=list
    )
    keep, images = [], []
    in_memory = need_mb <= budget_mb
    for chunk in loader:
        for i, img in chunk:
            if img is not None:
                keep.append(i)
                if in_memory:
                    images.append(img)
    skipped = len(files) - len(keep)
    idx = torch.tensor(keep, dtype=torch.long)
    if in_memory:
        stacked = (
            torch.stack(images)
            if images
            else torch.empty((0, 3, files.size, files.size), dtype=torch.uint8)
        )
        return TensorImages(stacked, files.labels[idx]), skipped
    log.info(
        "%d images (%.0f MB) exceed data.memory_budget_mb=%d: reading them per batch",
        len(keep),
        need_mb,
        budget_mb,
    )
    return files.subset(idx), skipped


class _SafeDecode(torch.utils.data.Dataset):
    def __init__(self, files: FileImages):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None]:
        try:
            return i, self.files[i]
        except Exception:  # unreadable or truncated image: counted and skipped by the caller
            return i, None


def list_image_files(folder: Path) -> list[str]:
    return sorted(
        str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
