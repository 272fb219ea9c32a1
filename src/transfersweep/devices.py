"""One trial per GPU: a run that may use any of this machine's GPUs takes the least busy one.

With several GPUs and `JOBS>1` (joblib workers), or several sweep workers on one machine,
every run would otherwise train on `cuda:0`. A run whose `trainer.device` is `auto` or `cuda`
(no index) picks, when it starts, the GPU with the fewest live transfersweep runs on it, and
writes its pick into its entry of the per-user run registry (`cores.py`: one file per
training process, named by its pid), under a lock so that two runs starting at once do not
pick the same one. `trainer.device=cuda:N` pins a run to GPU N and is counted on N.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from transfersweep import cores
from transfersweep.sweep.lock import file_lock  # POSIX flock, as the SQLite study lock


def pick(n_gpus: int, pinned: int | None = None) -> int:
    """This process's GPU among `n_gpus`: `pinned` if given, else the one the fewest other live
    registered runs use (the lowest index on a tie); recorded in this process's entry while
    it is registered."""
    where = cores.folder()
    where.mkdir(parents=True, exist_ok=True)
    with file_lock(where / ".devices.lock"):
        gpu = pinned if pinned is not None else least_used(n_gpus, _in_use(where))
        entry = where / str(os.getpid())
        if entry.exists():  # a registered run (cores.registered): others now count it on `gpu`
            entry.write_text(str(gpu))
    return gpu


def least_used(n_gpus: int, in_use: list[int]) -> int:
    load = [0] * n_gpus
    for g in in_use:
        if 0 <= g < n_gpus:
            load[g] += 1
    return min(range(n_gpus), key=lambda g: (load[g], g))


def _in_use(where: Path) -> list[int]:
    """The GPU of every other live registered run that recorded one."""
    out = []
    for entry in where.glob("*"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        if not cores.alive(int(entry.name)):
            continue
        with contextlib.suppress(OSError, ValueError):
            out.append(int(entry.read_text().strip()))  # an empty entry: a run on the CPU
    return out
