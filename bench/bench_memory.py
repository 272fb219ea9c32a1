"""Resident memory across 20 in-process trials (what a sweep with the basic launcher does:
`train.run`, then `memory.release`, as the Hydra task function `train.main` does): growth from
trial 5 to trial 20 should be ~0 (no leaked models, optimizers, runs or caches; the heap each
trial freed given back to the OS)."""

from __future__ import annotations

import gc
import tempfile

from common import compose, report

from transfersweep import train
from transfersweep.memory import release


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(trials: int = 20) -> float:
    rss = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(trials):
            regime = ["pretrain_finetune", "joint", "target_only", "pretrain_joint"][i % 4]
            freeze = ["full", "last_layer", "last_blocks"][i % 3]
            cfg = compose(
                [
                    "backbone=resnet18",
                    f"regime={regime}",
                    f"freeze={freeze}",
                    "trainer.source_epochs=1",
                    "trainer.target_epochs=2",
                    f"seed={i}",
                    f"paths.outputs={tmp}",
                ]
            )
            train.run(cfg)
            release()  # as train.main, the task function the basic launcher calls, does after it
            gc.collect()
            rss.append(rss_mb())
    growth = rss[-1] - rss[4]
    report(
        f"resident memory over {trials} in-process trials (resnet18)",
        f"{growth:+.0f} MB",
        "~0",
        f"after trial 1: {rss[0]:.0f} MB, 5: {rss[4]:.0f} MB, {trials}: {rss[-1]:.0f} MB",
    )
    return growth


if __name__ == "__main__":
    main()
