"""Out of memory (CPU or GPU) as a trial failure that names the settings to lower; the CPU
heap kept for the next batch while a run trains (`cache_heap`) and handed back to the OS when
it ends (`release`).

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


_libc: Any = None  # glibc, False where the C library is another (macOS, musl)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt's parameters (malloc.h)


def _glibc() -> Any:
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL("libc.so.6")
            lib.gnu_get_libc_version  # noqa: B018  (glibc's own symbol: not another libc.so.6)
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
    return _libc


def cache_heap() -> bool:
    """Keep the CPU memory a batch frees for the next one, as a caching allocator does (CUDA's,
    or jemalloc / tcmalloc, which PyTorch's CPU tuning guide preloads). glibc serves each
    block over its mmap threshold (128 KB, rising to at most 32 MB) with a fresh mmap and
    unmaps it on free, so every activation of every step came back as new zeroed pages: 10k-1M
    page faults per step, lite0's training step at 224 px 1.7x slower, resnet18's 1.2x
    (bench/README.md). Here blocks come from the heap and freed ones stay there; `release`
    hands them back when the run ends. Process-wide, and kept for the process's later runs;
    returns whether it took effect (glibc only)."""
    libc = _glibc()
    if not libc:
        return False
    # trim above 2 GB only: the int mallopt takes; release() trims all when the run ends
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def release() -> None:
    """Give the OS back the heap a finished run freed. glibc keeps freed memory in its arenas,
    so the resident size of a process that runs trial after trial (a basic-launcher sweep, a
    joblib worker) crept up by tens of MB over 20 trials with no object leaked; after
    malloc_trim it stays flat (bench_memory). A no-op where the C library is not glibc."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)
