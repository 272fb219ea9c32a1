"""A trial's parameters, and the overrides that make its job.

The search space's dimensions are sampled first (regime, freeze, lr, ...). A strategy's own
keys (`freeze.n_blocks` of last_blocks) exist only in trials of that strategy, so they are
conditional: once the trial's strategy is known, its keys are sampled over the ranges it
declares (`Strategy.search`, overridable with search.freeze.<strategy>.<key>), unless the
command line fixes or searches them; a fixed or searched `freeze.<key>` goes only to trials
whose strategy has that key. Grid sweeps sample nothing beyond their grid. Only Optuna's
public trial API is used here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import optuna
from omegaconf import DictConfig

from transfersweep.errors import ConfigError
from transfersweep.strategies import Strategy
from transfersweep.strategies.registry import RESERVED
from transfersweep.sweep.backbones import KEY
from transfersweep.sweep.hydra_optuna import SearchSpace

_D = optuna.distributions


def _suggest(trial: Any, name: str, dist: Any) -> None:
    if isinstance(dist, _D.CategoricalDistribution):
        trial.suggest_categorical(name, list(dist.choices))
    elif isinstance(dist, _D.IntDistribution):
        trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    elif isinstance(dist, _D.FloatDistribution):
        trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    else:
        raise TypeError(f"unsupported distribution for {name}: {dist!r}")


def _strategy_key(name: str) -> bool:
    return name.startswith("freeze.") and name.removeprefix("freeze.") not in RESERVED


def _range(strategy: type[Strategy], key: str, ranges: Mapping[str, Any]) -> Any:
    declared = strategy.search.get(key)
    given = (ranges.get(strategy.name) or {}).get(key)
    if declared is None or given is None:
        return declared
    try:
        return declared.replaced(list(given) if not isinstance(given, str) else given)
    except ValueError as e:
        raise ConfigError(
            f"search.freeze.{strategy.name}.{key}={given!r} is invalid: {e}"
        ) from None


def overrides(
    trial: Any,
    space: SearchSpace,
    strategy_of: Callable[[Any], type[Strategy]],
    ranges: Mapping[str, Any],
    config: DictConfig,
    extend: Callable[[DictConfig, Any], None] | None = None,
) -> tuple[str, ...]:
    """Sample `trial` and return its job's overrides. `strategy_of(freeze option or None)`
    gives the strategy class of the trial's freeze option (None: the config's default)."""
    for name, dist in space.distributions.items():
        if not _strategy_key(name):
            _suggest(trial, name, dist)
    strategy = strategy_of(trial.params.get("freeze", space.fixed.get("freeze")))
    own = {f"freeze.{k}" for k in strategy.keys()}
    for name in sorted(own):
        if name in space.fixed:
            continue
        if name in space.distributions:
            _suggest(trial, name, space.distributions[name])
        elif not space.grid and (rng := _range(strategy, name.removeprefix("freeze."), ranges)):
            rng.suggest(trial, name)
    if extend is not None:  # the user's own hydra.sweeper.custom_search_space hook
        extend(config, trial)
    return replay(trial.params, space, strategy_of)


def replay(
    params: Mapping[str, Any], space: SearchSpace, strategy_of: Callable[[Any], type[Strategy]]
) -> tuple[str, ...]:
    """The job overrides of a trial with these sampled `params`: them, plus the sweep's fixed
    values (a fixed strategy key only for the strategy that has it). The confirmation re-runs a
    finished trial's configuration through this."""
    strategy = strategy_of(params.get("freeze", space.fixed.get("freeze")))
    own = {f"freeze.{k}" for k in strategy.keys()}
    fixed = {k: v for k, v in space.fixed.items() if not _strategy_key(k) or k in own}
    merged = dict(params) | fixed
    out = tuple(f"{k}={v}" for k, v in merged.items() if k != KEY or not space.backbones)
    if space.backbones:  # a searched backbone: its preset, or timm's weights by name
        entry = str(merged[KEY])
        out += (*space.backbones[entry], f"trial.backbone={entry}")
    return out + tuple(space.fixed_overrides)
