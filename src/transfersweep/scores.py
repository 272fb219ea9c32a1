"""Scores by name: what a run measures on each split, and which one is the objective.

Every split a repeat is scored on (val, test, and ood when data.target.ood is set) gets every
metric in METRICS, named `<split>_<metric>`: val_acc, val_balanced_acc, test_macro_f1, ood_acc,
... The objective (`trainer.objective`) is one of the val names, read here and nowhere else:
it chooses each stage's best epoch, feeds the pruner, is the value Optuna optimises, and ranks
the sweep's tables, verdict, confirmation, champion and Pareto front. Test and ood scores are
reported beside it, never selected on.

A run's per-repeat scores are one Record, written once (transfersweep.results: the Optuna
trial's `record` attribute and summary.json carry the same dict) and read back by
Record.from_dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from transfersweep import stats
from transfersweep.errors import ConfigError

if TYPE_CHECKING:  # torch is imported by the code that has tensors (sweeps read Records only)
    import torch

METRICS = ("acc", "balanced_acc", "macro_f1")
SPLITS = ("val", "test", "ood")
OBJECTIVES = tuple(f"val_{m}" for m in METRICS)  # what trainer.objective may name
SUMMARY = "summary.json"  # a run's artifact: its estimates, and its Record under "record"


def objective_problem(name: str) -> str | None:
    if name in OBJECTIVES:
        return None
    return (
        f"trainer.objective={name} is not a known objective: choose one of "
        f"{', '.join(OBJECTIVES)} (test and ood scores are reported, never optimised)"
    )


def check_objective(name: str) -> None:
    if (problem := objective_problem(name)) is not None:
        raise ConfigError(problem)


def metric(objective: str) -> str:
    """The metric an objective scores on every split: val_balanced_acc -> balanced_acc."""
    check_objective(objective)
    return objective.removeprefix("val_")


def confusion(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """n_classes x n_classes counts, rows = true class, columns = predicted class."""
    flat = target.long() * n_classes + pred.long()
    return flat.bincount(minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def of_confusion(cm: torch.Tensor) -> dict[str, float]:
    """Every metric of METRICS from a confusion matrix, as scikit-learn defines them:
    balanced accuracy = mean recall over the classes present in the truth; macro-F1 = mean F1
    over the classes present in the truth or the predictions."""
    cm = cm.double()
    tp, truth, predicted = cm.diag(), cm.sum(1), cm.sum(0)
    total = float(cm.sum())
    present = truth > 0
    recall = tp[present] / truth[present]
    seen = present | (predicted > 0)
    f1 = 2 * tp[seen] / (truth[seen] + predicted[seen])
    return {
        "acc": float(tp.sum()) / total if total else 0.0,
        "balanced_acc": float(recall.mean()) if len(recall) else 0.0,
        "macro_f1": float(f1.mean()) if len(f1) else 0.0,
    }


def named(split: str, by_metric: Mapping[str, float]) -> dict[str, float]:
    return {f"{split}_{m}": v for m, v in by_metric.items()}


@dataclass(frozen=True)
class Record:
    """One run's per-repeat scores: repeat r is index[i], its k-shot draw's fingerprint
    draw[i], its target stages' seconds seconds[i], and scores[name][i] for every score name."""

    index: list[int]
    draw: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": list(self.index), "draw": list(self.draw), "seconds": list(self.seconds),
            "scores": {k: list(v) for k, v in self.scores.items()},
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Record | None:
        if not d or "index" not in d:
            return None
        return cls(
            [int(i) for i in d["index"]], list(d.get("draw", [])),
            [float(s) for s in d.get("seconds", [])],
            {k: [float(x) for x in v] for k, v in d.get("scores", {}).items()},
        )  # fmt: skip

    def values(self, name: str) -> dict[int, float]:
        """repeat index -> score (empty when the run did not measure `name`)."""
        return dict(zip(self.index, self.scores.get(name, []), strict=False))

    def estimate(self, name: str) -> stats.Estimate | None:
        values = self.scores.get(name)
        return stats.estimate(values) if values else None

    @property
    def n(self) -> int:
        return len(self.index)
