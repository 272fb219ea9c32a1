"""Scores by name: what a run measures on each split, and which one is the objective.

Every split a repeat is scored on (val, test; ood when data.target.ood is set; ood_val when
data.target.ood_val holds a shifted validation set out) gets every metric in METRICS, named
`<split>_<metric>`: val_acc, val_balanced_acc, test_macro_f1, ood_acc, ood_val_acc, ...
The objective (`trainer.objective`) is a val or ood_val name, read here and nowhere else: its
metric on val chooses each stage's best epoch and feeds the pruner, and the objective itself
is the value Optuna optimises and what the sweep's tables, verdict, confirmation, champion
and Pareto front rank by. An ood_val objective ranks runs on robustness, as AutoFT selects
hyperparameters on held-out shifted data, while epochs are still chosen in distribution.
Test and ood scores are reported beside it, never selected on.

A run's per-repeat scores are one Record, written once (transfersweep.results: the Optuna
trial's `record` attribute and summary.json carry the same dict) and read back by
Record.of_trial / Record.of_summary (which also read the formats from before Records).
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
# ood_val: the held-out shifted validation set (data.target.ood_val), apart from the ood test set
SPLITS = ("val", "ood_val", "test", "ood")
_LONGEST_FIRST = sorted(SPLITS, key=len, reverse=True)  # ood_val_acc is on ood_val, not ood
OBJECTIVES = tuple(f"{s}_{m}" for s in ("val", "ood_val") for m in METRICS)  # trainer.objective
SUMMARY = "summary.json"  # a run's artifact: its estimates, and its Record under "record"


def objective_problem(name: str, target: Any = None) -> str | None:
    """Why trainer.objective=`name` cannot be optimised (None: it can). `target`:
    data.target, whose held-out shifted validation set an ood_val_* objective needs."""
    if name not in OBJECTIVES:
        return (
            f"trainer.objective={name} is not a known objective: choose one of "
            f"{', '.join(OBJECTIVES)} (test and ood scores are reported, never optimised)"
        )
    if name.startswith("ood_val_") and target is not None:
        if not (target.ood_val and (target.ood or target.ood_root)):
            return (
                f"trainer.objective={name} scores the held-out shifted validation set: give "
                "data.target.ood=<shift or set> (or data.target.ood_root) and "
                "data.target.ood_val=true"
            )
    return None


def check_objective(name: str, target: Any = None) -> None:
    if (problem := objective_problem(name, target)) is not None:
        raise ConfigError(problem)


def split_of(name: str) -> str:
    """The split a score name is on: ood_val_acc -> ood_val, test_macro_f1 -> test."""
    return next(s for s in _LONGEST_FIRST if name.startswith(f"{s}_"))


def metric(name: str) -> str:
    """The metric of a score name: val_balanced_acc -> balanced_acc, ood_val_acc -> acc."""
    return name.removeprefix(f"{split_of(name)}_")


def on(name: str, split: str) -> str:
    """The same metric on another split: on("val_macro_f1", "test") -> test_macro_f1."""
    return f"{split}_{metric(name)}"


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

    @classmethod
    def of_trial(cls, attrs: Mapping[str, Any]) -> Record | None:
        """An Optuna trial's Record (its `record` attribute); a trial recorded before Records
        existed carried its val and test accuracy per repeat as separate lists."""
        if "record" in attrs or "repeat_val" not in attrs:
            return cls.from_dict(attrs.get("record"))
        scores = {"val_acc": attrs["repeat_val"], "test_acc": attrs.get("repeat_test", [])}
        return cls.from_dict(
            {"index": attrs.get("repeat_index", []), "draw": attrs.get("repeat_draw", []),
             "scores": {k: v for k, v in scores.items() if v}}
        )  # fmt: skip

    @classmethod
    def of_summary(cls, summary: Mapping[str, Any]) -> Record | None:
        """A run's Record from its summary.json; one written before Records listed repeats."""
        if "record" in summary or "repeats" not in summary:
            return cls.from_dict(summary.get("record"))
        reps = summary["repeats"]
        names = [
            k for k in ("val_acc", "test_acc", "ood_acc") if all(r.get(k) is not None for r in reps)
        ]
        return cls.from_dict(
            {"index": [r["index"] for r in reps], "draw": [r["draw"] for r in reps],
             "seconds": [r["seconds"] for r in reps],
             "scores": {k: [r[k] for r in reps] for k in names}}
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
