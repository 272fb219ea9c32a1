"""The stage plan: which stages a regime runs, on which data, with which freeze strategy.

A regime (conf/regime/) lists stages; this module turns them into `Stage`s:
stages on source data alone pretrain the whole model (freezing is a target-side
choice); every stage that sees target data applies the configured freeze
strategy, starting from whatever weights the backbone has at that point.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from transfersweep.config import FreezeStrategy, StageData


@dataclass(frozen=True)
class Stage:
    name: str  # metric prefix
    data: StageData
    epochs: int
    freeze: FreezeStrategy
    n_blocks: int

    @property
    def on_target(self) -> bool:
        return self.data != StageData.source


def plan(cfg: DictConfig) -> list[Stage]:
    stages = []
    for spec in cfg.regime.stages:
        data = StageData(spec.data)
        on_source = data == StageData.source
        stages.append(
            Stage(
                name=spec.name,
                data=data,
                epochs=cfg.trainer.source_epochs if on_source else cfg.trainer.target_epochs,
                freeze=FreezeStrategy.full if on_source else FreezeStrategy(cfg.freeze.strategy),
                n_blocks=cfg.freeze.n_blocks,
            )
        )
    return stages


def needs_source(stages: list[Stage]) -> bool:
    return any(s.data != StageData.target for s in stages)


def paradigm(cfg: DictConfig) -> str:
    """Short name of the paradigm, e.g. pretrain_finetune+last_blocks2."""
    f = cfg.freeze.strategy
    f = f.value if isinstance(f, FreezeStrategy) else str(f)
    if f == FreezeStrategy.last_blocks.value:
        f += str(cfg.freeze.n_blocks)
    return f"{cfg.regime.name}+{f}"
