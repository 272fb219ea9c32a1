"""The default first: a search starts with the paradigm a plain run of the same command trains.

AutoGluon made it a rule (autogluon#2068, #2133): the defaults often beat many random
configurations. So a new study's first trial is the config's own regime, strategy and values
(one per backbone, best pre-ranked first, when search.backbones lists several: each with its
own optimizer preset) (`hydra.sweeper.default_first`, on by default; grids cover every cell anyway), enqueued
before the sampler draws, and the verdict says where that default ended: "the default is tied
with the winner" tells a user the search was not needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    import optuna

    from transfersweep.strategies import Strategy
    from transfersweep.sweep.hydra_optuna import SearchSpace

ATTR = "default"  # the trial's user attribute that marks it


def _value(config: DictConfig, name: str) -> Any:
    if name == "regime":
        return config.regime.name
    if name == "freeze":
        return config.freeze.strategy
    return OmegaConf.select(config, name, default=None)


def _within(dist: Any, value: Any) -> bool:
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (TypeError, ValueError):
        return False


def params(
    config: DictConfig, space: SearchSpace, strategy_of: Callable[[Any], type[Strategy]]
) -> dict[str, Any]:
    """The space's dimensions at the values a plain run of `config` uses. A regime the data
    cannot train (no source set) becomes target_only, as `make train TARGET=...` does; a value
    outside its dimension (a config value the space excludes) is left to the sampler."""
    out = {}
    for name, dist in space.distributions.items():
        value = _value(config, name)
        if name == "regime" and not _within(dist, value) and _within(dist, "target_only"):
            value = "target_only"
        if value is not None and _within(dist, value):
            out[name] = value
    strategy = strategy_of(out.get("freeze", space.fixed.get("freeze")))
    if strategy.name == str(config.freeze.strategy):  # its own keys, as the config sets them
        for key in strategy.keys():
            name = f"freeze.{key}"
            value = config.freeze.get(key)
            if name not in space.fixed and value is not None:
                dist = space.distributions.get(name)
                if dist is None or _within(dist, value):
                    out[name] = value
    return out


def enqueue(study: optuna.Study, values: dict[str, Any]) -> None:
    """The default as the study's next trial (call on a study with no trials)."""
    study.enqueue_trial(values, user_attrs={ATTR: True})


def is_default(user_attrs: dict[str, Any]) -> bool:
    return bool(user_attrs.get(ATTR))


def place(study: Any, trials: list[Any], final: Any, search: Any) -> str | None:
    """Where the default paradigm ended (each backbone's, in a sweep over several), for the
    verdict: the winner, tied with it, worse, or not confirmed (None when the study has no
    default trial, e.g. a grid). `trials`: the summary's rows; `final`, `search`: the verdict
    that decides and the search's."""
    numbers = {t.number for t in study.trials if is_default(t.user_attrs)}
    found = [_place(r, final, search) for r in trials if r.number in numbers]
    found = [f for f in found if f is not None]
    return "; ".join(found) or None


def _place(row: Any, final: Any, search: Any) -> str | None:
    name = row.paradigm.name
    if row.value is None:
        return f"the default ({name}) did not finish ({row.state.lower()})"
    for verdict in (final, search):
        c = next((c for c in verdict.comparisons if c.row.paradigm.name == name), None)
        if c is None:
            continue
        where = "" if verdict is final else " in the search (not confirmed)"
        if c.status == "winner":
            return f"the default ({name}) is the winner{where}"
        if c.status == "tied":
            return f"the default ({name}) is tied with the winner{where} (p={c.p_holm:.2g})"
        if c.status == "worse":
            return f"the default ({name}) is worse{where} (Holm-adjusted p={c.p_holm:.2g})"
        return f"the default ({name}) is untested against the winner{where}"
    return None
