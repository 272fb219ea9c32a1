"""Out of memory (CPU or GPU) as a trial failure that names the settings to lower, and the
heap a finished run freed handed back to the OS (`release`).

Kept apart from the engine so the entrypoint can wrap set-up without importing timm early
(huggingface_hub reads HF_HUB_OFFLINE once, when it is imported).
"""

from __future__ import annotations

import ctypes
import gc
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from transfersweep.errors import TrainingError, first_line

_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    # Only look at torch when it is loaded already: a config error raised before the heavy
    # imports must not pay seconds for importing torch just to be told apart from an OOM.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(e, torch.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e).lower() for m in _OOM_MARKERS)


def memory_guard(cfg: DictConfig, what: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Run fn; out-of-memory becomes a TrainingError with the settings to change.

    The new error is raised after the `except` block, so the failed step's frames (and the
    tensors they hold) are freed first and the next in-process trial gets that memory back."""
    try:
        return fn(*args, **kwargs)
    except BaseException as e:
        if not is_oom(e):
            raise
        first = first_line(e, type(e).__name__)[:200]
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    d, t = cfg.data, cfg.trainer
    bf16 = ", or trainer.precision=bf16 on a GPU" if t.precision == "fp32" else ""
    raise TrainingError(
        f"out of memory while {what} ({first}): lower data.batch_size (now {d.batch_size}) "
        f"or data.image_size (now {d.image_size}){bf16}"
    )


_trim: Any = None  # glibc's malloc_trim, False where there is none (macOS, musl)


def release() -> None:
    """Give the OS back the heap a finished run freed. glibc keeps freed memory in its arenas,
    so the resident size of a process that runs trial after trial (a basic-launcher sweep, a
    joblib worker) crept up by tens of MB over 20 trials with no object leaked; after
    malloc_trim it stays flat (bench_memory). A no-op where the C library has no malloc_trim."""
    global _trim
    if _trim is None:
        try:
            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim:
        _trim(0)
