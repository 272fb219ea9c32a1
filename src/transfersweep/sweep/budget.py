"""A wall-clock budget for the whole search (`hydra.sweeper.time_budget=30m`, `TIME=30m`).

The budget is the study's, measured from its first trial's start, so every worker on one
storage (and a resumed sweep) spends the same clock. No new trial starts once a typical trial
(the median of the finished ones) would end past the budget; the trials in flight finish. The
confirmation runs in what is left when its estimate fits (each confirmed paradigm's search
trial, scaled to the confirmation's repeats), and is cut otherwise, with a note. The verdict
says what the budget allowed. AutoGluon, Ray Tune and ClearML stop a search the same way.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from transfersweep.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_FINISHED = ("COMPLETE", "PRUNED")  # trials with a duration that predicts the next one's


def parse(value: Any) -> float | None:
    """Seconds from `90`, `90s`, `30m`, `1.5h`, `1h30m`; None for null / empty."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ConfigError(
                f"hydra.sweeper.time_budget={value!r} is not a duration: give seconds or a "
                "number with s, m, h or d (90s, 30m, 1.5h, 1h30m)"
            )
        seconds = sum(float(n) * _UNITS[u or "s"] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"hydra.sweeper.time_budget={value!r}: give a positive duration")
    return seconds


def show(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.3g}h"
    return f"{seconds / 60:.3g}m" if seconds >= 60 else f"{seconds:.0f}s"


def _seconds(t: Any) -> float | None:
    if t.datetime_start is None or t.datetime_complete is None:
        return None
    return (t.datetime_complete - t.datetime_start).total_seconds()


@dataclass
class Budget:
    seconds: float
    given: str  # as the user wrote it, for messages

    def elapsed(self, study: Any) -> float:
        starts = [t.datetime_start for t in study.trials if t.datetime_start is not None]
        return (datetime.now() - min(starts)).total_seconds() if starts else 0.0

    def left(self, study: Any) -> float:
        return self.seconds - self.elapsed(study)

    def typical(self, study: Any) -> float | None:
        """The median duration of the study's finished trials (None before the first)."""
        done = [s for t in study.trials if t.state.name in _FINISHED and (s := _seconds(t))]
        return statistics.median(done) if done else None

    def allows_trial(self, study: Any) -> bool:
        typical = self.typical(study)
        return typical is None or self.elapsed(study) + typical <= self.seconds

    def confirmation_estimate(self, study: Any, numbers: list[int], factor: float) -> float:
        """Seconds the confirmation of trials `numbers` would take: each search trial's
        duration x `factor` (confirmation repeats / search repeats)."""
        by_number = {t.number: _seconds(t) or 0.0 for t in study.trials}
        return sum(by_number.get(n, 0.0) for n in numbers) * factor


def note(budget: Budget, study: Any, n_trials: int, confirmation: str | None) -> str:
    """What the budget allowed, for the verdict: trials done, and the confirmation."""
    done = sum(t.state.name in (*_FINISHED, "FAIL") for t in study.trials)
    text = f"the time budget ({budget.given}) allowed {done} of {n_trials} trials"
    return text + (f"; confirmation {confirmation}" if confirmation else "")
