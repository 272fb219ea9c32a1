"""Strategies by name (`freeze.strategy`), like timm's model registry.

Built-in strategies register when `transfersweep.strategies` is imported. A strategy of your
own registers when its module is imported: name the module in its yaml (`freeze.module`),
and `from_config` imports it first.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from transfersweep.errors import ConfigError
from transfersweep.strategies.base import Strategy

_STRATEGIES: dict[str, type[Strategy]] = {}

# Keys of the freeze config that belong to the framework, not to a strategy: which strategy,
# the module that registers it, and what BatchNorm running statistics do (every strategy).
RESERVED = ("strategy", "module", "norm_stats")
NORM_STATS = ("frozen", "adapt", "keep")


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make `cls` available as `freeze.strategy=<cls.name>`."""
    name = getattr(cls, "name", None)
    if not name or not isinstance(name, str):
        raise TypeError(f"{cls.__name__} needs a class attribute `name` to be registered")
    known = _STRATEGIES.get(name)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"strategy {name!r} is already registered by {known.__module__}")
    clashes = set(cls.keys()) & set(RESERVED)
    if clashes:
        raise TypeError(f"{cls.__name__}.Params may not use the reserved keys {sorted(clashes)}")
    _STRATEGIES[name] = cls
    return cls


def names() -> list[str]:
    """Registered strategies, in registration order (built-ins first)."""
    return list(_STRATEGIES)


def import_module(module: str | None) -> None:
    if not module:
        return
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(
            f"freeze.module={module!r} cannot be imported ({e}): put the folder that holds it on "
            "PYTHONPATH, or install the package that provides it"
        ) from None


def get(name: str, module: str | None = None) -> type[Strategy]:
    import_module(module)
    if name not in _STRATEGIES:
        raise ConfigError(
            f"freeze.strategy={name!r} is not a registered strategy: choose one of "
            f"{', '.join(names())}, or name the module that registers it in freeze.module"
        )
    return _STRATEGIES[name]


def from_config(freeze: Mapping[str, Any]) -> Strategy:
    """The strategy that the `freeze` config describes, with its own keys type-checked."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    values = dict(freeze.items())
    cls = get(str(values.get("strategy")), values.get("module"))
    own = {k: v for k, v in values.items() if k not in RESERVED}
    unknown = sorted(set(own) - set(cls.keys()))
    if unknown:
        keys = ", ".join(f"freeze.{k}" for k in cls.keys()) or "none"
        raise ConfigError(
            f"freeze.{unknown[0]}={own[unknown[0]]!r} is not a key of strategy {cls.name!r} "
            f"(its keys: {keys}): remove it, or choose the strategy that has it"
        )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls.Params), own)
        params = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "?"
        raise ConfigError(
            f"freeze.{key}={own.get(key)!r} is invalid for strategy {cls.name!r}: "
            f"{str(e).splitlines()[0]}"
        ) from None
    strategy = cls(params)
    strategy.norm_stats = str(values.get("norm_stats") or "frozen")
    if strategy.norm_stats not in NORM_STATS:
        raise ConfigError(
            f"freeze.norm_stats={strategy.norm_stats!r} is invalid: choose frozen (BatchNorm "
            "running statistics stay as the weights brought them where the strategy freezes), "
            "adapt (every BatchNorm re-estimates them on the training batches) or keep (every "
            "BatchNorm keeps them, trained blocks too; its affine weights train as the strategy says)"
        )
    strategy.check()
    return strategy


def create(name: str, **params: Any) -> Strategy:
    """A strategy by name with its keys, e.g. `create("last_blocks", n_blocks=2)`."""
    return from_config({"strategy": name, **params})
