"""One trial's results as the sweep's tables, verdict, confirmation and champion read them.

Its own module so that summary (which builds rows) and verdict (which compares them) do not
import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transfersweep.paradigm import Paradigm


@dataclass
class Row:
    number: int
    state: str
    paradigm: Paradigm
    val_acc: float | None  # mean over the trial's repeats
    val_std: float | None
    test_acc: float | None
    test_std: float | None
    run_id: str
    params: dict[str, Any]
    error: str
    val_ci: float | None = None  # 95 % t half-width (transfersweep.stats); None with one repeat
    test_ci: float | None = None
    repeat_val: dict[int, float] = field(default_factory=dict)  # repeat index -> val accuracy
    repeat_test: dict[int, float] = field(default_factory=dict)
    target_seconds: float | None = None  # the target stages per repeat: the paradigm's cost
    ood_acc: float | None = None  # data.target.ood: out-of-distribution test accuracy (reported)
    ood_ci: float | None = None

    @property
    def cell(self) -> tuple[str, str]:
        return (self.paradigm.regime, self.paradigm.strategy)

    @property
    def n(self) -> int:
        return len(self.repeat_val) or (1 if self.val_acc is not None else 0)

    def results(self) -> list[Any]:
        """The values of RESULT_COLUMNS, which both CSVs carry."""
        return [
            self.paradigm.name, self.val_acc, self.val_std, self.val_ci, self.test_acc,
            self.test_std, self.test_ci, self.ood_acc, self.ood_ci, self.n, self.target_seconds,
            self.run_id,
        ]  # fmt: skip


RESULT_COLUMNS = [
    "paradigm", "val_acc", "val_std", "val_ci95", "test_acc", "test_std", "test_ci95", "ood_acc",
    "ood_ci95", "n", "target_seconds", "run_id",
]  # fmt: skip
