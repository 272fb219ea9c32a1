"""A paradigm is a value: a regime, a tuning strategy and the strategy's own parameters.

Its short name (`pretrain_finetune+last_blocks2`) is formatted here and nowhere else; tags,
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

    @property
    def name(self) -> str:
        return f"{self.regime}+{self.variant or self.strategy}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def from_cfg(cls, config: DictConfig) -> Paradigm:
        """The configured paradigm. A freeze setting that does not check out still gets a name
        (its strategy's), so a trial that fails on it is named; the error comes from
        validation.validate."""
        from transfersweep import strategies
        from transfersweep.errors import ConfigError

        try:
            strategy = strategies.from_config(config.freeze)
        except ConfigError:
            return cls(regime=str(config.regime.name), strategy=str(config.freeze.get("strategy")))
        values = {k: getattr(strategy.params, k) for k in strategy.keys()}
        stats = strategy.norm_stats  # BatchNorm statistics adapted or kept: a variant
        if stats != "frozen":
            values["norm_stats"] = stats
        return cls(
            regime=str(config.regime.name),
            strategy=strategy.name,
            variant=strategy.label() + (f"_{stats}" if stats != "frozen" else ""),
            params=tuple(sorted(values.items())),
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
        }

    @classmethod
    def from_trial(cls, user_attrs: Mapping[str, Any], params: Mapping[str, Any]) -> Paradigm:
        """A sweep trial's paradigm: as its job recorded it, or (a job that failed before it
        could) from the trial's sampled regime and freeze."""
        if user_attrs.get("paradigm"):
            return cls.from_dict(user_attrs["paradigm"])
        return cls(regime=str(params.get("regime", "?")), strategy=str(params.get("freeze", "?")))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Paradigm:
        return cls(
            regime=str(d["regime"]),
            strategy=str(d["strategy"]),
            variant=str(d.get("variant") or d["strategy"]),
            params=tuple(sorted(dict(d.get("params") or {}).items())),
        )
