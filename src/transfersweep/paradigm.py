"""A paradigm is a value: a regime, a tuning strategy and the strategy's own parameters.

Its short name (`pretrain_finetune+last_blocks2`; `lite0/pretrain_finetune+last_blocks2` in a
sweep over several backbones, search.backbones) is formatted here and nowhere else; tags,
trial attributes, the summary table, the heatmap and the CSVs are built from the value (and
read back with `from_dict`), so nothing parses names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig


@dataclass(frozen=True)
class Paradigm:
    regime: str  # regime.name
    strategy: str  # freeze.strategy
    variant: str = ""  # the strategy's label with its distinguishing keys, e.g. last_blocks2
    params: tuple[tuple[str, Any], ...] = ()  # the strategy's own keys (freeze.*) and values
    backbone: str = ""  # the search.backbones entry, in a sweep over several ("": not searched)

    @property
    def name(self) -> str:
        where = f"{self.backbone}/" if self.backbone else ""
        return f"{where}{self.regime}+{self.variant or self.strategy}"

    @property
    def regime_row(self) -> str:
        """The paradigm table's row: the regime, per backbone when backbones are searched."""
        return f"{self.backbone}/{self.regime}" if self.backbone else self.regime

    def __str__(self) -> str:
        return self.name

    @classmethod
    def from_cfg(cls, config: DictConfig) -> Paradigm:
        """The configured paradigm. A freeze setting that does not check out still gets a name
        (its strategy's), so a trial that fails on it is named; the error comes from
        validation.validate."""
        from omegaconf import OmegaConf

        from transfersweep import strategies
        from transfersweep.errors import ConfigError

        backbone = str(OmegaConf.select(config, "trial.backbone", default=None) or "")
        try:
            strategy = strategies.from_config(config.freeze)
        except ConfigError:
            return cls(
                regime=str(config.regime.name),
                strategy=str(config.freeze.get("strategy")),
                backbone=backbone,
            )
        values = {k: getattr(strategy.params, k) for k in strategy.keys()}
        stats = strategy.norm_stats  # BatchNorm statistics adapted or kept: a variant
        if stats != "frozen":
            values["norm_stats"] = stats
        return cls(
            regime=str(config.regime.name),
            strategy=strategy.name,
            variant=strategy.label() + (f"_{stats}" if stats != "frozen" else ""),
            params=tuple(sorted(values.items())),
            backbone=backbone,
        )

    def tags(self) -> dict[str, str]:
        """MLflow tags: the short name and each axis (filter runs on `regime` or `freeze`)."""
        return {"paradigm": self.name, "regime": self.regime, "freeze": self.strategy}

    def to_dict(self) -> dict[str, Any]:
        return {
            "regime": self.regime,
            "strategy": self.strategy,
            "variant": self.variant,
            "params": dict(self.params),
            "backbone": self.backbone,
        }

    @classmethod
    def from_trial(cls, user_attrs: Mapping[str, Any], params: Mapping[str, Any]) -> Paradigm:
        """A sweep trial's paradigm: as its job recorded it, or (a job that failed before it
        could) from the trial's sampled regime and freeze."""
        if user_attrs.get("paradigm"):
            return cls.from_dict(user_attrs["paradigm"])
        return cls(
            regime=str(params.get("regime", "?")),
            strategy=str(params.get("freeze", "?")),
            backbone=str(params.get("backbone") or ""),
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Paradigm:
        return cls(
            regime=str(d["regime"]),
            strategy=str(d["strategy"]),
            variant=str(d.get("variant") or d["strategy"]),
            params=tuple(sorted(dict(d.get("params") or {}).items())),
            backbone=str(d.get("backbone") or ""),
        )
