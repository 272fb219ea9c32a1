"""Share this machine's cores between the transfersweep runs on it, instead of oversubscribing.

Two training processes at torch's default threads on 2 cores made each step about 3x slower
(bench/README.md). So every run (a single run, or a sweep's trial in whichever process runs it:
the sweep itself, a joblib worker, another worker of the same study, another study) registers
its process id in a per-user folder while it trains, and a run whose `trainer.threads` is null
takes `cores // processes registered`: alone, all of them (torch's default), beside one other
run, half. The count is taken again before each epoch, so a run takes the cores a finished
sibling freed (a JOBS=2 sweep whose cheap trial ended first goes on with both cores) and gives
half back when another starts. CPU reductions can round differently with another split, so a
run whose numbers must repeat to the last bit sets `trainer.threads` (the tests do).
joblib's workers additionally get OMP/MKL/OpenBLAS limits from joblib itself (cores // n_jobs).
The BLAS libraries outside torch (numpy's and scipy's OpenBLAS or MKL, read once when they
load) get the same share from `limit_native`, which the entrypoint calls before its first
import of them; a run's DataLoader workers (files read from disk) are at most its threads.
`TRANSFERSWEEP_RUNS_DIR` moves the folder (default: the temp dir).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


def available() -> int:
    """The cores this process may use (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def folder() -> Path:
    base = os.environ.get("TRANSFERSWEEP_RUNS_DIR") or tempfile.gettempdir()
    return Path(base) / f"transfersweep-runs-{os.getuid() if hasattr(os, 'getuid') else 0}"


def alive(pid: int) -> bool:
    """Whether process `pid` of this machine still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running() -> int:
    """Registered processes that are alive (a dead one's entry is removed)."""
    where, n = folder(), 0
    for entry in where.glob("*") if where.is_dir() else ():
        try:
            pid = int(entry.name)
        except ValueError:
            continue
        if alive(pid):
            n += 1
        else:
            entry.unlink(missing_ok=True)
    return n


@contextlib.contextmanager
def registered() -> Iterator[None]:
    """This process counted as a training process while the block runs (re-entrant: a nested
    registration of the same process counts once)."""
    where = folder()
    where.mkdir(parents=True, exist_ok=True)
    entry = where / str(os.getpid())
    mine = not entry.exists()
    entry.touch()
    try:
        yield
    finally:
        if mine:
            entry.unlink(missing_ok=True)


_default: int | None = None  # torch's own thread count, before this module changed it


def total(parallel_jobs: int = 1) -> int:
    """The threads this machine's runs share: torch's default (physical cores, or what
    OMP_NUM_THREADS says), or in one of a joblib launcher's `parallel_jobs` workers, whose
    default joblib already divided (cores // n_jobs), that split undone."""
    import torch

    global _default
    if _default is None:
        _default = torch.get_num_threads()
    if parallel_jobs > 1:
        return min(available(), _default * parallel_jobs)
    return min(_default, available())


def share(parallel_jobs: int = 1, starting: bool = True) -> int:
    """Threads for this run: `total` split between the registered processes (this one
    included). A run `starting` in a joblib launcher counts all of its `parallel_jobs`
    workers, registered yet or not (they start together); later, only the live ones count,
    so a run takes the cores a finished sibling freed (`engine.Runtime.rebalance`)."""
    n = max(running(), parallel_jobs if starting else 1, 1)
    return max(1, total(parallel_jobs) // n)


# BLAS thread pools other than torch's: read once, when their library loads. OMP_NUM_THREADS
# is left alone: torch reads it as its default, which `share` divides already.
NATIVE = (
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def limit_native() -> dict[str, str]:
    """Before numpy, scipy or torch load: each BLAS pool gets this run's share of the cores
    (the registered runs plus this one), unless the variable is set already (by you, or by
    joblib in its workers). Returns what it set; nothing once those libraries are loaded."""
    if any(m in sys.modules for m in ("numpy", "torch", "scipy")):
        return {}
    n = str(max(1, available() // (running() + 1)))
    out = {k: n for k in NATIVE if k not in os.environ}
    os.environ.update(out)
    return out


def loader_workers(wanted: int, threads: int | None) -> int:
    """DataLoader workers for a run with `threads` torch threads: at most that many (a run
    beside others does not start more processes than its share of the cores)."""
    return wanted if threads is None else min(wanted, max(1, threads))
