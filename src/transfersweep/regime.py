"""The stage plan: which stages a regime runs, and every decision about each of them.

A regime (conf/regime/) lists stages by name and data. `plan` turns them into `Stage`s that
carry everything a stage needs: its data, epochs, learning rate, tuning strategy, loss, where
its weights start, head size and which logits are evaluated. A stage may set any of these in
its yaml (`epochs`, `lr`, `lr_scale`, `freeze`, `loss`, `init`: config.StageSpec); what it
leaves unset comes from its data kind. Stages on source data alone pretrain the whole model
at `optimizer.source_lr` on plain cross-entropy (the strategy, lr and loss are target-side
choices); every stage that sees target data uses the configured strategy (`freeze`), loss
(`loss`) and `optimizer.lr`, starting from whatever weights the backbone has at that point
(`init: previous`), or from the weights the target stages started from (`init: start`: a
fresh copy, as self-distillation wants).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from transfersweep import config
from transfersweep.config import StageData
from transfersweep.errors import ConfigError
from transfersweep.losses import CrossEntropy, Loss
from transfersweep.losses import from_config as loss_from_config
from transfersweep.strategies import Strategy, from_config

if TYPE_CHECKING:
    from transfersweep.data import TransferData

INITS = ("previous", "start")


@dataclass(frozen=True)
class Stage:
    name: str  # metric prefix: pretrain, finetune, joint, target
    data: StageData  # what it trains on
    epochs: int
    lr: float
    strategy: Strategy  # what trains when
    num_classes: int  # classifier outputs (joint: target + source classes)
    eval_classes: int | None  # logits that count when evaluating (joint: the target's); None = all
    loss: Loss = CrossEntropy()
    init: str = "previous"  # previous | start (INITS)

    @property
    def on_target(self) -> bool:
        return self.data != StageData.source


def needs_source(cfg: DictConfig) -> bool:
    return config.needs_source(cfg.regime)


def _where(i: int) -> str:
    return f"regime.stages[{i}]"


def specs(cfg: DictConfig) -> list[dict[str, Any]]:
    """Each stage's decisions, by key (no data needed): what `plan` builds and `check` checks."""
    t, o = cfg.trainer, cfg.optimizer
    out = []
    for i, spec in enumerate(cfg.regime.stages):
        kind = StageData(spec.data)
        on_source = kind == StageData.source
        freeze = spec.freeze
        if freeze is None:
            freeze = {"strategy": "full"} if on_source else cfg.freeze
        elif "norm_stats" not in freeze:  # the stage's strategy, the run's BatchNorm choice
            freeze = dict(freeze) | {"norm_stats": cfg.freeze.norm_stats}
        loss = spec.loss if spec.loss is not None else (None if on_source else cfg.loss)
        out.append(
            {
                "name": spec.name,
                "data": kind,
                "epochs": spec.epochs if spec.epochs is not None else (
                    t.source_epochs if on_source else t.target_epochs
                ),
                "lr": (spec.lr if spec.lr is not None else (o.source_lr if on_source else o.lr))
                * spec.lr_scale,
                "freeze": freeze,
                "loss": loss,
                "loss_where": f"{_where(i)}.loss" if spec.loss is not None else "loss",
                "init": spec.init,
            }
        )  # fmt: skip
    return out


def check(cfg: DictConfig) -> None:
    """Every stage's own keys, before anything loads: a ConfigError names the key and the fix."""
    stages = specs(cfg)
    seen: set[str] = set()
    for i, (s, spec) in enumerate(zip(stages, cfg.regime.stages, strict=True)):
        where = _where(i)
        if s["name"] in seen:
            raise ConfigError(
                f"{where}.name={s['name']!r} is used twice in regime={cfg.regime.name}: every "
                "stage needs its own name (its metrics are logged under it)"
            )
        seen.add(s["name"])
        if s["epochs"] < 1:
            key = f"{where}.epochs" if spec.epochs is not None else "trainer.*_epochs"
            raise ConfigError(f"{key}={s['epochs']} is invalid: a stage needs 1 epoch or more")
        if not s["lr"] > 0:
            raise ConfigError(
                f"{where}: learning rate {s['lr']!r} (lr x lr_scale) is invalid: use positive values"
            )
        if s["init"] not in INITS:
            raise ConfigError(
                f"{where}.init={s['init']!r} is invalid: previous (the weights the stage before "
                "left) or start (the weights the target stages started from: a fresh copy)"
            )
        if s["init"] == "start" and s["data"] == StageData.source:
            raise ConfigError(
                f"{where}.init=start is for stages that see target data (it restarts from the "
                "weights the target stages started from); a source stage continues: remove it"
            )
        if spec.freeze is not None:
            _strategy(s["freeze"], f"{where}.freeze")
        loss = loss_from_config(s["loss"], s["loss_where"])
        if loss.uses_teacher:
            _check_teacher(cfg, i, s)


def _strategy(freeze: Any, where: str) -> Strategy:
    try:
        return from_config(freeze)
    except ConfigError as e:  # the message names freeze.<key>: say which stage's
        raise ConfigError(f"{where}: {e}") from None


def _check_teacher(cfg: DictConfig, i: int, s: dict[str, Any]) -> None:
    """A teacher's logits must start with the student's classes: the previous stage trained on
    the same data kind, or on joint data (target classes first) for a target student."""
    where = s["loss_where"]
    if i == 0:
        raise ConfigError(
            f"{where}.name=distill in the first stage of regime={cfg.regime.name}: the teacher is "
            "the previous stage's result, and there is none. Put a stage before it, or use name=ce"
        )
    before = StageData(cfg.regime.stages[i - 1].data)
    if not (before == s["data"] or (before == StageData.joint and s["data"] == StageData.target)):
        raise ConfigError(
            f"{where}.name=distill: stage {i} trains on {s['data'].value} data but its teacher "
            f"(stage {i - 1}) on {before.value} data, whose logits are other classes. Distil from "
            "a stage on the same data (or joint data into a target stage)"
        )


def plan(cfg: DictConfig, data: TransferData) -> list[Stage]:
    stages = []
    for s in specs(cfg):
        kind = s["data"]
        stages.append(
            Stage(
                name=s["name"],
                data=kind,
                epochs=int(s["epochs"]),
                lr=float(s["lr"]),
                strategy=from_config(s["freeze"]),
                num_classes=data.num_classes(kind),
                eval_classes=len(data.target.classes) if kind == StageData.joint else None,
                loss=loss_from_config(s["loss"], s["loss_where"]),
                init=s["init"],
            )
        )  # fmt: skip
    return stages
