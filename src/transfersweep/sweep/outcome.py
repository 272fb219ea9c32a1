"""How a trial ended, as a small typed value (not a string prefix).

`kind` is also stored on the Optuna trial (user attribute `outcome`), so a later worker can
tell a trial that says something about its parameters (complete, pruned, failed) from one
whose worker was interrupted or died (its parameters are queued to run again).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Complete:
    value: float  # the objective (trainer.objective): the first of a multi-objective study
    more: tuple[float, ...] = ()  # the other objectives of a multi-objective study
    kind: ClassVar[str] = "complete"

    @property
    def values(self) -> list[float]:
        return [self.value, *self.more]


@dataclass(frozen=True)
class Pruned:
    epoch: int | None  # the last epoch the trial reported
    value: float | None = None  # the objective's val score it reported then
    kind: ClassVar[str] = "pruned"

    @property
    def reason(self) -> str:
        if self.epoch is None:
            return "pruned"
        return f"pruned at epoch {self.epoch} (target val score {self.value:.4f})"


@dataclass(frozen=True)
class Failed:
    reason: str
    kind: ClassVar[str] = "failed"


@dataclass(frozen=True)
class Interrupted:
    """Ctrl-C / SIGTERM while the trial ran: its parameters run again later."""

    reason: str
    kind: ClassVar[str] = "interrupted"


@dataclass(frozen=True)
class Stale:
    """Its worker died (kill -9, lost node): its parameters run again later."""

    reason: str
    kind: ClassVar[str] = "stale"


Outcome = Complete | Pruned | Failed | Interrupted | Stale
REDO = (Interrupted.kind, Stale.kind)  # outcomes that say nothing about the parameters


def from_job(ret: Any, last_report: tuple[int, float] | None) -> Outcome:
    """The outcome of a Hydra JobReturn; `last_report` is the trial's last (epoch, value)
    reported to the pruner, if any."""
    import optuna
    from hydra.core.utils import JobStatus

    from transfersweep.errors import first_line

    if ret.status != JobStatus.COMPLETED:
        e = ret._return_value  # Hydra keeps the job's exception here
        if isinstance(e, optuna.TrialPruned):
            return Pruned(*last_report) if last_report else Pruned(None)
        return Failed(f"{type(e).__name__}: {first_line(e)}"[:500])
    try:
        value = float(ret.return_value)
    except (TypeError, ValueError):
        return Failed(f"objective is not a number: {ret.return_value!r}")
    if not math.isfinite(value):
        return Failed(f"objective is not finite: {value}")
    return Complete(value)
