"""Pretrain reuse: a source stage whose inputs are identical runs once; later runs load its result.

The key is a digest of everything that decides the stage's outcome: backbone (with a
digest of a local weights file), source data and splits, image size, batch size,
optimizer, source epochs, precision, seed, the stages before it, and the torch/timm
versions. Results live under `<paths.outputs>/cache/pretrain/<key>/`. An exclusive
file lock per key makes concurrent workers that need the same stage wait for the
one that trains it instead of training it twice; a killed worker's lock is released
by the OS, and the result is written to a temporary name and renamed, so a
half-written cache entry is never read.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from transfersweep.backbone import PACKAGE, package_file

log = logging.getLogger(__name__)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def key(cfg: DictConfig, stage_index: int, precision: str) -> str:
    """Digest of the inputs of source stage `stage_index` (and the stages before it)."""
    import timm
    import torch

    from transfersweep.data import fingerprint

    c = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    backbone = dict(c["backbone"])
    w = backbone.get("weights")
    if w and w.startswith(PACKAGE):  # what the installed package holds now
        backbone["weights"] = _file_digest(package_file(w))
    elif w and Path(w).expanduser().is_file():
        backbone["weights"] = _file_digest(Path(w).expanduser())
    d = c["data"]
    source = dict(d["source"])
    source["fingerprint"] = fingerprint.of(source, mtimes=True)  # every kind: files or package
    ingredients = {
        "v": 1,
        "backbone": backbone,
        "source": source,
        "data": {
            k: d[k]
            for k in (
                "image_size",
                "crop_pct",
                "interpolation",
                "val_fraction",
                "test_fraction",
                "split_seed",
                "augment",
                "batch_size",
            )
        }
        | ({"aug": d["aug"]} if d["augment"] else {}),
        "optimizer": {
            k: v for k, v in c["optimizer"].items() if k != "lr"
        },  # lr: target stages only
        "epochs": c["trainer"]["source_epochs"],
        "select": c["trainer"]["objective"],  # its metric picks the source stage's best epoch
        "precision": precision,
        "channels_last": c["trainer"]["channels_last"],
        "seed": c["seed"],
        "stages": c["regime"]["stages"][: stage_index + 1],
        "versions": [torch.__version__.split("+")[0], timm.__version__],
    }
    return hashlib.sha256(
        json.dumps(ingredients, sort_keys=True, default=str).encode()
    ).hexdigest()[:20]


@dataclass
class Entry:
    dir: Path
    key: str

    @property
    def hit(self) -> bool:
        return (self.dir / "model.safetensors").is_file() and (self.dir / "meta.json").is_file()

    def meta(self) -> dict[str, Any]:
        return json.loads((self.dir / "meta.json").read_text())

    def load(self) -> dict[str, Any]:
        from safetensors.torch import load_file

        return load_file(str(self.dir / "model.safetensors"))

    def store(self, state: dict[str, Any], meta: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        tmp = self.dir.with_name(f".{self.dir.name}.{os.getpid()}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in state.items()},
            str(tmp / "model.safetensors"),
        )
        (tmp / "meta.json").write_text(
            json.dumps(meta | {"key": self.key, "created": time.time()}, indent=1)
        )
        os.replace(tmp, self.dir)  # atomic: readers see all of it or nothing


@contextmanager
def claim(cfg: DictConfig, stage_key: str) -> Iterator[Entry]:
    """Hold the key's lock while checking, training and storing; others wait, then hit."""
    root = Path(cfg.paths.outputs).expanduser().resolve() / "cache" / "pretrain"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{stage_key}.lock", "w") as lock:
        t0 = time.perf_counter()
        fcntl.flock(lock, fcntl.LOCK_EX)
        waited = time.perf_counter() - t0
        if waited > 1:
            log.info("waited %.0fs for another worker training the same pretrain stage", waited)
        try:
            yield Entry(root / stage_key, stage_key)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
