"""Two runs on one machine: one after the other, at once sharing the cores, at once oversubscribed.

The same single run (resnet18 from scratch, full fine-tuning on the digits target at 64 px, one
repeat, no resume state) twice, three ways, each timed from the first start to the last end:

- one after the other, each at torch's default threads (the reference: 1.00);
- both at once with `trainer.threads` null: each takes cores // 2 (transfersweep.cores);
- both at once, each at torch's default threads (`trainer.threads=<default>`: what two
  processes did before the cores were shared).

Target: at once and shared <= 1.00 (two trials in no more time than one after the other).

Then the same through a sweep: `sweep=grid` over two cells of equal cost (target_only+full at
two learning rates; 120 epochs each, so that starting two worker processes is not all that is
measured), with JOBS=1 (the trials one after the other in the sweep's process) and JOBS=2
(`hydra/launcher=joblib`, two worker processes, each its share): wall time of the whole sweep
command. Target: JOBS=2 <= JOBS=1. And two cells of unequal cost (last_blocks, whose frozen
prefix is cached, and full): there the worker whose trial ends first frees its core, which the
other run takes at its next epoch (`engine.Runtime.rebalance`); reported, no target: each
joblib worker starts its own interpreter (imports, ~5 s of CPU on these cores) where JOBS=1
imports once.
`make bench ARGS=cores` (about 9 minutes on 2 cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import report

RUN = [
    "backbone=resnet18", "data=digits", "data.image_size=64", "regime=target_only",
    "freeze=full", "trainer.target_epochs=30", "trainer.repeats=1", "trainer.device=cpu",
    "trainer.resume=false", "tracking.log_checkpoint=false",
]  # fmt: skip


def _runs(out: Path, at_once: bool, extra: list[str]) -> float:
    def start(i: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "transfersweep.train", *RUN, f"paths.outputs={out / str(i)}",
             *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFERSWEEP_RUNS_DIR": str(out)},
        )  # fmt: skip

    t0 = time.perf_counter()
    if at_once:
        procs = [start(0), start(1)]
        codes = [p.wait() for p in procs]
    else:
        codes = [start(0).wait(), start(1).wait()]
    assert codes == [0, 0], f"a run failed: exit codes {codes}"
    return time.perf_counter() - t0


SWEEP = [
    "-m", "sweep=grid", "backbone=resnet18", "data=digits", "data.image_size=64",
    "regime=target_only", "trainer.target_epochs=120", "trainer.repeats=1",
    "trainer.device=cpu", "trainer.resume=false", "tracking.log_checkpoint=false",
    "hydra.sweeper.register_champion=false",
]  # fmt: skip
EQUAL = ["search.strategies=[full]", "optimizer.lr=choice(0.001,0.002)"]
UNEQUAL = ["search.strategies=[last_blocks,full]"]
JOBS2 = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2"]


def _sweep(out: Path, extra: list[str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "transfersweep.train", *SWEEP, f"paths.outputs={out}", *extra],
        capture_output=True, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFERSWEEP_RUNS_DIR": str(out)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return time.perf_counter() - t0


def main() -> None:
    import torch

    default = torch.get_num_threads()
    print(f"two runs on {os.cpu_count()} cores (torch's default: {default} threads)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        apart = _runs(out / "a", False, [])
        shared = _runs(out / "b", True, [])
        crowded = _runs(out / "c", True, [f"trainer.threads={default}"])
    report("one after the other (default threads)", f"{apart:.1f} s", "1.00")
    report(
        "at once, cores shared (threads null)",
        f"{shared:.1f} s",
        "<= 1.00",
        f"{shared / apart:.2f}x",
    )
    report("at once, both at default threads", f"{crowded:.1f} s", "", f"{crowded / apart:.2f}x")
    for cells, what, target in ((EQUAL, "equal", "<= 1.00"), (UNEQUAL, "unequal", "")):
        with tempfile.TemporaryDirectory() as tmp:
            one = _sweep(Path(tmp) / "jobs1", cells)
            two = _sweep(Path(tmp) / "jobs2", cells + JOBS2)
        report(f"a 2-trial sweep ({what} cells), JOBS=1", f"{one:.1f} s", "1.00")
        report(
            "the same sweep, JOBS=2 (joblib workers)", f"{two:.1f} s", target, f"{two / one:.2f}x"
        )


if __name__ == "__main__":
    main()
