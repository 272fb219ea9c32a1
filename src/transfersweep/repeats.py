"""Repeats: what varies between the runs of a paradigm's target stages, and what stays fixed.

With 5 images per class, *which* 5 were drawn moves the accuracy as much as the training seed,
so by default repeat r trains on its own k-shot draw and its own seed (`trainer.repeat_over`:
both | seed | draw). The val and test images never change, and repeat r is the same draw and
seed in every trial of a study: two paradigms' repeat r form a pair, which is what the sweep's
paired comparison (transfersweep.stats) needs. A confirmation run starts at a later index
(`trainer.first_repeat`), so its draws and seeds are fresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from omegaconf import DictConfig

if TYPE_CHECKING:
    from transfersweep.stages import StageResult


@dataclass(frozen=True)
class Repeat:
    index: int  # r: the MLflow step of its metrics and its key in paired comparisons
    draw: int  # k-shot draw of the target training images (data.splits.Splits.draw)
    seed: int  # seed index: the stage seeds are cfg.seed + stage + 1000 * seed


def plan(trainer: DictConfig) -> list[Repeat]:
    first, over = trainer.first_repeat, trainer.repeat_over
    return [
        Repeat(
            r, draw=r if over in ("both", "draw") else 0, seed=r if over in ("both", "seed") else 0
        )
        for r in range(first, first + trainer.repeats)
    ]


@dataclass
class RepeatResult:
    """What one repeat of the target stages scored (stages.repeat), kept per repeat so the
    results are a mean with a CI and paired across paradigms."""

    index: int  # the repeat's index r (Repeat.index)
    draw: str  # fingerprint of its k-shot draw (data.splits.Splits.digest)
    seconds: float  # the target stages' training and scoring
    # every score by name (transfersweep.scores): val_acc, test_macro_f1, ...
    scores: dict[str, float]
    last: StageResult  # the last stage's result: its best epoch's weights
