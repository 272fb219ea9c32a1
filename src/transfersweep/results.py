"""Result logging: what a run reports once its stages have trained.

The objective is the mean best target validation accuracy over the repeats; test accuracy is
reported beside it, never optimised. Everything lands in the MLflow run (metrics,
summary.json, the best repeat's checkpoint as the strategy exports it) and, in a sweep, on
the Optuna trial (user attributes the sweep's summary reads back).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from transfersweep.inputs import Inputs
from transfersweep.paradigm import Paradigm
from transfersweep.stages import RepeatResult
from transfersweep.sweep.trial import TrialLink


@dataclass
class Outcome:
    val_acc: float  # mean over repeats: the objective
    val_std: float  # 0.0 with one repeat
    test_acc: float
    test_std: float
    seconds: float  # the whole run after set-up: source stages and every repeat
    repeats: list[RepeatResult]


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def log_inputs(mlrun: Any, cfg: DictConfig, inputs: Inputs) -> None:
    """The resolved config as params, the split sizes as metrics, where it ran as tags."""
    from transfersweep import tracking

    data, runtime = inputs.data, inputs.runtime
    mlrun.log_params(tracking.flatten(cfg))
    sizes = {f"data/target_{k}": v for k, v in data.target.sizes().items()}
    if data.source:
        sizes |= {f"data/source_{k}": v for k, v in data.source.sizes().items()}
    skipped = data.target.skipped_files + (data.source.skipped_files if data.source else 0)
    mlrun.log_metrics(sizes | {"data/skipped_files": skipped})
    mlrun.set_tags(
        {
            "device": str(runtime.device),
            "precision": str(runtime.amp_dtype or "fp32").removeprefix("torch."),
            "threads": str(runtime.threads or "default"),
        }
    )


def log(
    mlrun: Any,
    link: TrialLink,
    cfg: DictConfig,
    paradigm: Paradigm,
    inputs: Inputs,
    repeats: list[RepeatResult],
    seconds: float,
) -> Outcome:
    vals = [r.val_acc for r in repeats]
    tests = [r.test_acc for r in repeats]
    out = Outcome(
        statistics.fmean(vals), _std(vals), statistics.fmean(tests), _std(tests), seconds, repeats
    )
    mlrun.log_metrics(
        {
            "val_acc": out.val_acc,
            "val_acc_std": out.val_std,
            "test_acc": out.test_acc,
            "test_acc_std": out.test_std,
            "run_seconds": out.seconds,
        }
    )
    mlrun.log_json(
        {
            "paradigm": paradigm.to_dict() | {"name": paradigm.name},
            "backbone": cfg.backbone.name,
            "data": cfg.data.name,
            "val_acc": out.val_acc,
            "val_acc_std": out.val_std,
            "test_acc": out.test_acc,
            "test_acc_std": out.test_std,
            "repeats": {"val_acc": vals, "test_acc": tests},
            "seconds": out.seconds,
        },
        "summary.json",
    )
    if cfg.tracking.enabled and cfg.tracking.log_checkpoint:
        _log_checkpoint(mlrun, cfg, inputs, repeats)
    repeated = len(repeats) > 1
    link.set_attrs(
        {
            "val_acc": out.val_acc,
            "val_std": out.val_std if repeated else None,
            "test_acc": out.test_acc,
            "test_std": out.test_std if repeated else None,
            "repeats": len(repeats),
            "run_id": mlrun.run_id,
        }
    )
    return out


def _log_checkpoint(mlrun: Any, cfg: DictConfig, inputs: Inputs, repeats: list[RepeatResult]):
    """The best repeat's weights, as its strategy exports them (a plain timm state dict)."""
    from transfersweep import tracking

    r, best = max(enumerate(repeats), key=lambda x: x[1].val_acc)  # first of equals
    final = inputs.stages[-1]
    inputs.model.load_state_dict(best.last.best_state)
    tracking.save_checkpoint(
        mlrun,
        final.strategy.export(inputs.model),
        cfg,
        {
            "backbone": cfg.backbone.name,
            "num_classes": final.num_classes,
            "classes": list(inputs.data.target.classes),
            "target_logits": len(inputs.data.target.classes),
            "stage": final.name,
            "repeat": r,
            "best_epoch": best.last.best_epoch,
            "val_acc": best.last.best_val_acc,
        },
    )
