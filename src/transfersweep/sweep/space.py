"""The search space a sweep runs, shaped from what it was given and what the data allows.

Three adjustments before Optuna sees the space (the rest is the stock sweeper's parsing):

- **regimes that need a source set** leave the `regime` choice when the data has none (an
  image-folder target alone), with a note for the log and the verdict; none left is an error;
- **the freeze dimension** comes from `search.strategies` (`[all]`: every strategy in
  conf/freeze, the built-in ones first), unless the command line or hydra.sweeper.params
  choose `freeze` themselves;
- **the backbone dimension** comes from `search.backbones` (two or more: sweep/backbones.py),
  with the lr range widened to cover every backbone's optimizer preset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transfersweep.errors import ConfigError


@dataclass
class Shaped:
    arguments: list[str]  # the command line's overrides, as the stock sweeper will parse them
    params: dict[str, Any]  # hydra.sweeper.params, possibly with a narrowed regime choice
    note: str | None = None  # why the space is narrower than configured (log, verdict)
    backbones: list[str] = field(default_factory=list)  # search.backbones ([]: not searched)


def shape(
    config: Any,
    params: dict[str, Any] | None,
    arguments: list[str],
    compose: Callable[[list[str]], Any],
    freeze_options: list[str],
) -> Shaped:
    """The sweep's arguments and params, with both adjustments (module doc)."""
    shaped = regimes_for_data(config, dict(params or {}), arguments, compose)
    shaped.arguments = with_strategies(config, shaped.params, shaped.arguments, freeze_options)
    return shaped


def with_backbones(
    shaped: Shaped, wanted: list[str], presets: list[str], compose: Callable[[list[str]], Any]
) -> Shaped:
    """The backbone dimension over `wanted` (already ranked and cut by the pre-ranking), and an
    lr range that covers each backbone's optimizer preset (sweep/backbones.py)."""
    from transfersweep.sweep import backbones

    given = _given(shaped.arguments)
    configs = backbones.composed(wanted, presets, plain(shaped.arguments), compose)
    params = dict(shaped.params)
    lo, hi = backbones.lr_range(configs)
    if "optimizer.lr" in params and "optimizer.lr" not in given:
        params["optimizer.lr"] = f"tag(log, interval({lo:g}, {hi:g}))"
    choice = wanted[0] if len(wanted) == 1 else f"choice({','.join(wanted)})"
    return Shaped([*shaped.arguments, f"{backbones.KEY}={choice}"], params, shaped.note, wanted)


def _given(arguments: list[str]) -> set[str]:
    return {a.split("=", 1)[0].lstrip("+~") for a in arguments if "=" in a}


def plain(arguments: list[str]) -> list[str]:
    """The command line's fixed values (sweep=..., data...), as every job gets them."""
    return [a for a in arguments if "=" in a and not any(c in a for c in ",()")]


def refuse_fixed_backbone(arguments: list[str], wanted: list[str]) -> None:
    if _given(arguments) & {"backbone", "backbone.name"}:
        raise ConfigError(
            f"search.backbones={wanted} and backbone= on the command line: give one (the "
            "backbones to search, or the one backbone to use)"
        )


def options(spec: str) -> list[str]:
    """The values of a regime choice: choice(a, b), a,b or a."""
    inner = spec.strip()
    if inner.startswith("choice(") and inner.endswith(")"):
        inner = inner[len("choice(") : -1]
    return [v.strip() for v in inner.split(",") if v.strip()]


def regimes_for_data(
    config: Any, params: dict[str, Any], arguments: list[str], compose: Callable
) -> Shaped:
    """Without a source set, the regimes that need one leave the search space."""
    from transfersweep.config import has_source, needs_source

    if has_source(config.data):
        return Shaped(arguments, params)
    given = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in arguments if "=" in a}
    spec = given.get("regime", params.get("regime", config.regime.name))
    fixed = [a for a in plain(arguments) if not a.startswith("regime=")]
    wanted = options(str(spec))
    drop = [r for r in wanted if needs_source(compose([*fixed, f"regime={r}"]).regime)]
    keep = [r for r in wanted if r not in drop]
    if not drop:
        return Shaped(arguments, params)
    if not keep:
        raise ConfigError(
            f"regime {spec} needs a source set, but data.source.root is not set. Fix: "
            "regime=target_only (your target images alone, from the backbone's weights), or "
            "data.source.root=/path/to/a/larger/related/set"
        )
    note = (
        f"Without a source set (data.source.root is not set) the search covered "
        f"{', '.join(keep)} only: {', '.join(drop)} need one"
    )
    value = keep[0] if len(keep) == 1 else f"choice({','.join(keep)})"
    if "regime" in given:
        rest = [a for a in arguments if not a.startswith("regime=")]
        return Shaped([*rest, f"regime={value}"], params, note)
    return Shaped(arguments, {**params, "regime": value}, note)


def with_strategies(
    config: Any, params: dict[str, Any], arguments: list[str], freeze_options: list[str]
) -> list[str]:
    """The command line plus the freeze dimension from search.strategies."""
    if "freeze" in _given(arguments) or "freeze" in params:
        return arguments
    from transfersweep.strategies import BUILT_IN

    catalogue = [n for n in BUILT_IN if n in freeze_options] + sorted(
        set(freeze_options) - set(BUILT_IN)
    )
    wanted = list(config.search.strategies)
    unknown = [n for n in wanted if n not in freeze_options and n != "all"]
    if unknown or not wanted or ("all" in wanted and len(wanted) > 1):
        raise ConfigError(
            f"search.strategies={wanted}: "
            f"{f'{unknown[0]!r} is not a freeze option' if unknown else 'invalid'}. "
            f"Give [all] or names from conf/freeze: [{','.join(catalogue)}]"
        )
    names = catalogue if wanted == ["all"] else wanted
    return [*arguments, f"freeze=choice({','.join(names)})"]
