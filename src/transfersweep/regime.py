"""The stage plan: which stages a regime runs, and every decision about each of them.

A regime (conf/regime/) lists stages by name and data. `plan` turns them into `Stage`s
that carry everything a stage needs: its data, epochs, learning rate, tuning strategy,
head size and which logits are evaluated. Stages on source data alone pretrain the whole
model at `optimizer.source_lr` (the strategy is a target-side choice); every stage that
sees target data uses the configured strategy at `optimizer.lr`, starting from whatever
weights the backbone has at that point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from transfersweep import config
from transfersweep.config import StageData
from transfersweep.strategies import Strategy, create, from_config

if TYPE_CHECKING:
    from transfersweep.data import TransferData


@dataclass(frozen=True)
class Stage:
    name: str  # metric prefix: pretrain, finetune, joint, target
    data: StageData  # what it trains on
    epochs: int
    lr: float
    strategy: Strategy  # what trains when
    num_classes: int  # classifier outputs (joint: target + source classes)
    eval_classes: int | None  # logits that count when evaluating (joint: the target's); None = all

    @property
    def on_target(self) -> bool:
        return self.data != StageData.source


def needs_source(cfg: DictConfig) -> bool:
    return config.needs_source(cfg.regime)


def plan(cfg: DictConfig, data: TransferData) -> list[Stage]:
    t, o = cfg.trainer, cfg.optimizer
    target_strategy = from_config(cfg.freeze)
    stages = []
    for spec in cfg.regime.stages:
        kind = StageData(spec.data)
        on_source = kind == StageData.source
        stages.append(
            Stage(
                name=spec.name,
                data=kind,
                epochs=t.source_epochs if on_source else t.target_epochs,
                lr=o.source_lr if on_source else o.lr,
                strategy=create("full") if on_source else target_strategy,
                num_classes=data.num_classes(kind),
                eval_classes=len(data.target.classes) if kind == StageData.joint else None,
            )
        )
    return stages
