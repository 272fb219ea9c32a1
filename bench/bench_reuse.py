"""A grid sweep over the pretrain-based regimes (2 regimes x 3 freezes = 6 trials), with and
without pretrain reuse: every trial shares the same source stage, so reuse trains it once."""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import cli, report

ARGS = [
    "-m",
    "sweep=grid",
    "regime=pretrain_finetune,pretrain_joint",
    "backbone=resnet18",
    "trainer.source_epochs=5",
    "trainer.target_epochs=5",
]


def main() -> float:
    times = {}
    for reuse in ("false", "true"):
        with tempfile.TemporaryDirectory() as tmp:
            seconds, res = cli(
                [*ARGS, f"trainer.reuse_pretrain={reuse}", f"paths.outputs={tmp}"], Path(tmp)
            )
            assert res.returncode == 0, res.stderr[-2000:]
            times[reuse] = seconds
    report(
        "sweep of 6 pretrain-based trials: without / with pretrain reuse",
        f"{times['false'] / times['true']:.2f}x",
        "",
        f"{times['false']:.0f}s vs {times['true']:.0f}s (resnet18, 5 source + 5 target epochs)",
    )
    return times["false"] / times["true"]


if __name__ == "__main__":
    main()
