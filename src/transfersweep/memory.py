"""Out of memory (CPU or GPU) as a trial failure that names the settings to lower; the CPU
heap kept for the next batch while a run trains (`cache_heap`), large blocks on huge pages
(`restart_with_huge_pages`), the heap handed back to the OS when a run ends (`release`).

Kept apart from the engine so the entrypoint can wrap set-up without importing timm early
(huggingface_hub reads HF_HUB_OFFLINE once, when it is imported).
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
from collections.abc import Callable
from pathlib import Path
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
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
HUGE_PAGES = "glibc.malloc.hugetlb=1"  # glibc >= 2.35: madvise(MADV_HUGEPAGE) on its mappings
HEAP_BLOCK_MAX = 32 * 2**20  # blocks kept in the heap: up to glibc's largest mmap threshold
TRIM_ABOVE = 2**31 - 1  # free heap top trimmed above 2 GB only (the largest int mallopt takes)


def _glibc() -> Any:
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL("libc.so.6")
            lib.gnu_get_libc_version.restype = ctypes.c_char_p  # glibc's own: not another libc
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
    return _libc


def cache_heap() -> bool:
    """Keep the CPU memory a batch frees for the next one, as a caching allocator does (CUDA's,
    or the jemalloc / tcmalloc that PyTorch's CPU tuning guide preloads): blocks up to 32 MB
    come from the heap and stay there when freed, where glibc's default mmaps each block over
    a threshold it moves between 128 KB and 32 MB and unmaps it on free, so a step's
    activations came back as fresh zeroed pages: thousands of page faults per step, the cached
    probe's feature pass 0.17-0.29 s instead of 0.13 s (bench/README.md). Larger blocks are
    still mapped and unmapped (a heap-only glibc fragmented a 224 px run's peak from 7.7 to
    11.9 GB); `restart_with_huge_pages` makes their faults 512x fewer. `release` hands the
    heap back when the run ends. Process-wide; returns whether it took effect (glibc only)."""
    libc = _glibc()
    if not libc:
        return False
    # release() trims all at the end
    return bool(libc.mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK_MAX)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE)
    )


def _transparent_huge_pages() -> str:
    """The kernel's THP mode: always | madvise | never ('' where there is none)."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return ""
    return text[text.find("[") + 1 : text.find("]")] if "[" in text else ""


_NO_TRAINING = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--version"}


def restart_with_huge_pages() -> None:
    """Start this command again, once, with glibc told to back its memory with transparent
    huge pages (2 MB: 512x fewer page faults for a block it maps). Where the kernel gives huge
    pages only on request (THP `madvise`, the default of Debian and Ubuntu), a training step
    at 224 px spent most of its time faulting in its activations' pages: with them and
    cache_heap, 2 epochs of lite0 at 224 px took 55 s instead of 138 s, at the same peak
    memory (bench/README.md).
    glibc reads the setting only when a process starts, hence the restart (the same process
    id, before any heavy import). Nothing happens where it cannot help: not glibc >= 2.35,
    THP `always` (already) or `never`, the setting already there, or
    TRANSFERSWEEP_HUGE_PAGES=0 (the opt-out)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if os.environ.get("TRANSFERSWEEP_HUGE_PAGES", "1") == "0" or "malloc.hugetlb" in tunables:
        return
    if _NO_TRAINING.intersection(sys.argv[1:]):  # keep --help fast (a restart: ~0.17 s)
        return
    libc = _glibc()
    if not libc or _transparent_huge_pages() != "madvise":
        return
    major, minor = (int(x) for x in libc.gnu_get_libc_version().decode().split(".")[:2])
    if (major, minor) < (2, 35):
        return
    env = {**os.environ, "GLIBC_TUNABLES": ":".join(t for t in (tunables, HUGE_PAGES) if t)}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def release() -> None:
    """Give the OS back the heap a finished run freed. glibc keeps freed memory in its arenas,
    so the resident size of a process that runs trial after trial (a basic-launcher sweep, a
    joblib worker) crept up by tens of MB over 20 trials with no object leaked; after
    malloc_trim it stays flat (bench_memory). A no-op where the C library is not glibc."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)
