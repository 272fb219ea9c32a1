"""One trial's results as the sweep's tables, verdict, confirmation and champion read them.

A row holds the run's Record (every score of every repeat, transfersweep.scores) and the
study's objective; everything that ranks or compares reads `value`, `ci` and `values()` (the
objective) or `est(name)` (any other score), so changing trainer.objective changes them all.
Its own module so that summary (which builds rows) and verdict (which compares them) do not
import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transfersweep import scores, stats
from transfersweep.paradigm import Paradigm
from transfersweep.scores import Record


@dataclass
class Row:
    number: int
    state: str
    paradigm: Paradigm
    run_id: str
    params: dict[str, Any]
    error: str
    objective: str  # trainer.objective: the score name that ranks
    record: Record | None = None  # None: the run scored nothing (failed, pruned)
    target_seconds: float | None = None  # the target stages per repeat: the paradigm's cost

    @property
    def cell(self) -> tuple[str, str]:
        return (self.paradigm.regime_row, self.paradigm.strategy)

    def est(self, name: str) -> stats.Estimate | None:
        """Mean, std and 95 % CI of score `name` over the row's repeats."""
        return self.record.estimate(name) if self.record is not None else None

    def values(self, name: str | None = None) -> dict[int, float]:
        """repeat index -> score (the objective by default): what paired tests pair."""
        return self.record.values(name or self.objective) if self.record is not None else {}

    @property
    def value(self) -> float | None:
        """The objective's mean over the repeats (None: not scored)."""
        e = self.est(self.objective)
        return e.mean if e is not None else None

    @property
    def ci(self) -> float | None:
        e = self.est(self.objective)
        return e.ci95 if e is not None else None

    @property
    def n(self) -> int:
        return len(self.values())

    def on(self, split: str) -> str:
        """The objective's metric on another split: val_macro_f1 -> test_macro_f1."""
        return scores.on(self.objective, split)

    def results(self) -> list[Any]:
        """The values of result_columns(objective), which both CSVs carry."""
        out: list[Any] = [self.paradigm.name]
        for split, parts in _scored(self.objective):
            e = self.est(self.on(split))
            out += [None if e is None else getattr(e, p) for p in parts]
        return out + [self.n, self.target_seconds, self.run_id]


def pm(mean: float | None, ci: float | None) -> str:
    """0.835 ± 0.059 (mean ± 95 % CI half-width), the mean alone without a CI, - for none."""
    if mean is None:
        return "-"
    return f"{mean:.3f} ± {ci:.3f}" if ci is not None else f"{mean:.3f}"


def _scored(objective: str) -> list[tuple[str, tuple[str, ...]]]:
    """The splits both CSVs show, the objective's first, and which parts of each estimate."""
    first = scores.split_of(objective)
    rest = [s for s in ("val", "test", "ood") if s != first]
    return [(first, ("mean", "std", "ci95")), (rest[0], ("mean", "std", "ci95")),
            (rest[1], ("mean", "ci95"))]  # fmt: skip


def result_columns(objective: str) -> list[str]:
    """CSV header: the objective (val_acc, ...) and the same metric on the other splits."""
    out = ["paradigm"]
    for split, parts in _scored(objective):
        name = scores.on(objective, split)
        out += [name if p == "mean" else f"{name}_{p}" for p in parts]
    return out + ["n", "target_seconds", "run_id"]
