"""Result logging: what a run reports once its stages have trained.

Every repeat is scored by name on every split (transfersweep.scores); the objective
(`trainer.objective`, default val_acc) is the mean of one val score over the repeats; test and
ood scores are reported beside it, never optimised. The per-repeat scores are one Record,
written once as one dict: summary.json in the MLflow run (beside the metrics, the best
repeat's checkpoint as the strategy exports it) and, in a sweep, the Optuna trial's `record`
attribute, which the sweep's summary reads back.
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
from transfersweep.scores import SUMMARY, Record
from transfersweep.sweep.trial import TrialLink


@dataclass
class Outcome:
    objective: str  # trainer.objective: a score name
    record: Record  # every score of every repeat
    seconds: float  # the whole run after set-up: source stages and every repeat
    target_seconds: float  # the target stages, per repeat (mean): the paradigm's training cost

    def estimate(self, name: str) -> stats.Estimate | None:
        return self.record.estimate(name)

    @property
    def value(self) -> float:
        """The objective: its mean over the repeats."""
        e = self.record.estimate(self.objective)
        assert e is not None, f"no {self.objective} was scored"
        return e.mean


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
    names = list(repeats[0].scores)
    record = Record(
        [r.index for r in repeats], [r.draw for r in repeats], [r.seconds for r in repeats],
        {name: [r.scores[name] for r in repeats] for name in names},
    )  # fmt: skip
    out = Outcome(
        cfg.trainer.objective, record, seconds, statistics.fmean(r.seconds for r in repeats)
    )
    estimates = {name: e for name in names if (e := record.estimate(name)) is not None}
    metrics = {"run_seconds": out.seconds, "target_seconds": out.target_seconds}
    for name, e in estimates.items():
        metrics |= {name: e.mean, f"{name}_std": e.std, f"{name}_n": e.n}
        if e.ci95 is not None:
            metrics |= {f"{name}_ci95": e.ci95}
    mlrun.log_metrics(metrics)
    mlrun.log_json(
        {
            "paradigm": paradigm.to_dict() | {"name": paradigm.name},
            "backbone": cfg.backbone.name,
            "data": cfg.data.name,
            "objective": out.objective,
            **{name: _estimate_dict(e) for name, e in estimates.items()},
            "confidence": f"{stats.LEVEL:.0%} Student t interval of the mean over repeats",
            "repeat_over": cfg.trainer.repeat_over,
            "record": record.to_dict(),
            "seconds": out.seconds,
            "target_seconds": out.target_seconds,
        },
        SUMMARY,
    )
    if cfg.tracking.enabled and cfg.tracking.log_checkpoint:
        _log_checkpoint(mlrun, cfg, inputs, repeats)
    link.set_attrs(
        {
            "objective": out.objective,
            "record": record.to_dict(),  # per repeat, for the sweep's paired comparisons
            "repeats": len(repeats),
            "target_seconds": out.target_seconds,
            "run_id": mlrun.run_id,
        }
    )
    return out


def _estimate_dict(e: stats.Estimate) -> dict[str, Any]:
    return {"mean": e.mean, "std": e.std, "n": e.n, "ci95": e.ci95, "low": e.low, "high": e.high}


def _log_checkpoint(mlrun: Any, cfg: DictConfig, inputs: Inputs, repeats: list[RepeatResult]):
    """The best repeat's weights (on the objective; first of equals): a plain timm state dict
    (adapters are merged by then)."""
    from transfersweep import tracking

    objective = cfg.trainer.objective
    best = max(repeats, key=lambda r: r.scores[objective])
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
            "repeat": best.index,  # the MLflow step of its repeat/<score> metrics
            "draw": best.draw,
            "best_epoch": best.last.best_epoch,
            "objective": objective,
            **best.scores,
        },
    )
