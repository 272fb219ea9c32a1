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

from transfersweep import stats
from transfersweep.inputs import Inputs
from transfersweep.paradigm import Paradigm
from transfersweep.repeats import RepeatResult
from transfersweep.sweep.trial import TrialLink


@dataclass
class Outcome:
    val: stats.Estimate  # over repeats; val.mean is the objective
    test: stats.Estimate
    ood: stats.Estimate | None  # data.target.ood: the out-of-distribution test set
    seconds: float  # the whole run after set-up: source stages and every repeat
    target_seconds: float  # the target stages, per repeat (mean): the paradigm's training cost
    repeats: list[RepeatResult]

    @property
    def val_acc(self) -> float:
        return self.val.mean

    @property
    def test_acc(self) -> float:
        return self.test.mean


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
    target_seconds = statistics.fmean(r.seconds for r in repeats)
    oods = [r.ood_acc for r in repeats if r.ood_acc is not None]
    ood = stats.estimate(oods) if oods else None
    out = Outcome(
        stats.estimate(vals), stats.estimate(tests), ood, seconds, target_seconds, repeats
    )
    metrics = {"run_seconds": out.seconds, "target_seconds": out.target_seconds}
    named = [("val_acc", out.val), ("test_acc", out.test)] + ([("ood_acc", ood)] if ood else [])
    for name, e in named:
        metrics |= {name: e.mean, f"{name}_std": e.std, f"{name}_n": e.n}
        if e.ci95 is not None:
            metrics |= {f"{name}_ci95": e.ci95}
    mlrun.log_metrics(metrics)
    mlrun.log_json(
        {
            "paradigm": paradigm.to_dict() | {"name": paradigm.name},
            "backbone": cfg.backbone.name,
            "data": cfg.data.name,
            **{name: _estimate_dict(e) for name, e in named},
            "confidence": f"{stats.LEVEL:.0%} Student t interval of the mean over repeats",
            "repeat_over": cfg.trainer.repeat_over,
            "repeats": [
                {"index": r.index, "draw": r.draw, "val_acc": r.val_acc, "test_acc": r.test_acc,
                 "ood_acc": r.ood_acc, "seconds": r.seconds}
                for r in repeats
            ],
            "seconds": out.seconds,
            "target_seconds": out.target_seconds,
        },
        "summary.json",
    )  # fmt: skip
    if cfg.tracking.enabled and cfg.tracking.log_checkpoint:
        _log_checkpoint(mlrun, cfg, inputs, repeats)
    link.set_attrs(
        {
            "val_acc": out.val.mean,
            "val_std": out.val.std if out.val.n > 1 else None,
            "val_ci95": out.val.ci95,
            "test_acc": out.test.mean,
            "test_std": out.test.std if out.test.n > 1 else None,
            "test_ci95": out.test.ci95,
            "ood_acc": ood.mean if ood else None,
            "ood_ci95": ood.ci95 if ood else None,
            "repeats": len(repeats),
            # per repeat, for the sweep's paired comparisons
            "repeat_index": [r.index for r in repeats],
            "repeat_val": vals,
            "repeat_test": tests,
            "repeat_draw": [r.draw for r in repeats],
            "target_seconds": out.target_seconds,
            "run_id": mlrun.run_id,
        }
    )
    return out


def _estimate_dict(e: stats.Estimate) -> dict[str, Any]:
    return {"mean": e.mean, "std": e.std, "n": e.n, "ci95": e.ci95, "low": e.low, "high": e.high}


def _log_checkpoint(mlrun: Any, cfg: DictConfig, inputs: Inputs, repeats: list[RepeatResult]):
    """The best repeat's weights: a plain timm state dict (adapters are merged by then)."""
    from transfersweep import tracking

    best = max(repeats, key=lambda r: r.val_acc)  # first of equals
    final = inputs.stages[-1]
    inputs.model.load_state_dict(best.last.best_state)
    tracking.save_checkpoint(
        mlrun,
        inputs.model.state_dict(),
        cfg,
        {
            "backbone": cfg.backbone.name,
            "num_classes": final.num_classes,
            "classes": list(inputs.data.target.classes),
            "target_logits": len(inputs.data.target.classes),
            "stage": final.name,
            "repeat": best.index,  # the MLflow step of its repeat/val_acc and repeat/test_acc
            "draw": best.draw,
            "best_epoch": best.last.best_epoch,
            "val_acc": best.last.best_val_acc,
            "test_acc": best.test_acc,
        },
    )
