"""The tuning-strategy interface: what the generic code asks of every strategy.

A strategy decides what trains when, at which learning rate, for the stages that see target
data, the way a timm model answers `group_matcher` and `get_classifier` for the generic
timm code. It is given a `Layout` (the model with its parameter names per block, from timm's
own grouping) and answers:

- `phases(layout, epochs)`: the stage's epochs as consecutive phases, each with the parameter
  names that train in it and a learning-rate scale (one phase for a fixed freeze; "head
  first, then everything" is two). Raises ConfigError when it cannot apply to the model.
- `lr_scales(layout)`: learning-rate multipliers per parameter name (default: none).
- `cached_prefix(layout, phase)`: how many leading blocks stay frozen and deterministic for a
  whole phase, so their output can be computed once (the feature cache).
- `Params` / `search`: its own config keys (under `freeze.*`) and their sweep ranges.
- `label()`: its short name in a paradigm (`last_blocks2`; `_adapt` / `_keep` is added by the
  paradigm for `freeze.norm_stats=adapt` / `keep`, a framework key every strategy has).
- `attach(layout)` / `detach(model)`: change the model when a stage starts (insert adapters)
  and turn it back into a plain timm model when it ends (merge them), so test scoring, the
  checkpoint and the next repeat see the same model as with any other strategy.

This module imports neither torch nor timm: configs are checked without them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from transfersweep.errors import ConfigError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class IntRange:
    """Sweep range of an integer key: sampled uniformly from low..high."""

    low: int
    high: int

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high)

    def replaced(self, value: Any) -> IntRange:
        low, high = _bounds(value)
        return IntRange(int(low), int(high))


@dataclass(frozen=True)
class FloatRange:
    """Sweep range of a float key: low..high, on a log scale when `log`."""

    low: float
    high: float
    log: bool = False

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def replaced(self, value: Any) -> FloatRange:
        low, high = _bounds(value)
        return FloatRange(float(low), float(high), self.log)


@dataclass(frozen=True)
class Choice:
    """Sweep range of a key with a few values."""

    values: tuple[Any, ...]

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.values))

    def replaced(self, value: Any) -> Choice:
        values = tuple(value) if isinstance(value, (list, tuple)) else ()
        if not values:
            raise ValueError("give a list of values, e.g. [a,b]")
        return Choice(values)


def _bounds(value: Any) -> tuple[Any, Any]:
    if not isinstance(value, (list, tuple)) or len(value) != 2 or value[0] > value[1]:
        raise ValueError("give [low,high] with low <= high")
    return value[0], value[1]


@dataclass
class Layout:
    """A model seen through timm's grouping: parameter names per block (input side first) and
    the classifier's parameter names. Built by `transfersweep.freezing.layout`."""

    model: torch.nn.Module
    blocks: list[list[str]]
    head: list[str]
    model_name: str = ""

    def block_names(self, first: int = 0, stop: int | None = None) -> set[str]:
        """Parameter names of blocks first..stop-1 (all blocks by default), no head."""
        return {n for b in self.blocks[first:stop] for n in b}

    def names(self, first_block: int = 0) -> set[str]:
        """The head plus every block from `first_block` to the last."""
        return self.block_names(first_block) | set(self.head)

    def check_blocks(self, key: str, value: int, low: int = 1) -> None:
        """A block count or index out of the model's range is a config error naming the fix."""
        n = len(self.blocks)
        if not low <= value <= n:
            raise ConfigError(
                f"{key}={value} is out of range for {self.model_name}, which has {n} blocks "
                f"besides its classifier (timm coarse groups). Choose {low}..{n}, or "
                "freeze=full / freeze=last_layer."
            )


@dataclass(frozen=True)
class Phase:
    """Consecutive epochs that train the same parameters at the same learning-rate scale."""

    epochs: int
    trains: frozenset[str]  # parameter names, classifier included
    # x the stage's learning rate. None: the optimizer's default for the phase (the head
    # alone trains at optimizer.probe_lr_scale; with blocks, the head at .head_lr_scale).
    # A strategy that sets it (lp_ft's probe) owns the phase's rate: no default applies.
    lr_scale: float | None = None
    name: str = ""  # shown in the log when a stage has several phases
    # False: BatchNorm layers normalise with their running statistics and keep them (eval mode)
    # even where their affine parameters train, so only the named parameters change.
    norm_stats: bool = True


@dataclass
class NoParams:
    """A strategy without keys of its own."""


class Strategy:
    """Base class: subclass it, set `name` (and `Params`, `search`), implement `phases`, and
    decorate the class with `@transfersweep.strategies.register`."""

    name: ClassVar[str]
    Params: ClassVar[type] = NoParams  # a dataclass: its keys under freeze.*, typed
    search: ClassVar[Mapping[str, IntRange | FloatRange | Choice]] = {}  # sweep ranges of keys

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()
        # freeze.norm_stats, the framework's key for every strategy: "frozen" keeps BatchNorm
        # running statistics where the strategy freezes (exact); "adapt" lets every BatchNorm
        # re-estimate them on the target batches while its weights stay as `phases` says
        # (AdaBN, Li et al. 2016; Schneider et al., NeurIPS 2020); "keep" keeps every
        # BatchNorm's statistics, trained blocks included (eval-mode BatchNorm: tiny target
        # batches give poor batch statistics).
        self.norm_stats = "frozen"

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls.Params))

    def check(self) -> None:
        """Range checks on the strategy's own keys that need no model (ConfigError)."""

    def label(self) -> str:
        """Short name in a paradigm: the strategy name, plus what distinguishes its variants."""
        return self.name

    def phases(self, layout: Layout, epochs: int) -> list[Phase]:
        raise NotImplementedError

    def lr_scales(self, layout: Layout) -> dict[str, float]:
        """Learning-rate multiplier per parameter name; absent names train at 1.0."""
        return {}

    def cached_prefix(self, layout: Layout, phase: Phase) -> int:
        """Leading blocks whose output can be computed once for `phase`: by default those
        with no trainable parameter (frozen parts run in eval mode, so they are deterministic)."""
        for i, block in enumerate(layout.blocks):
            if phase.trains.intersection(block):
                return i
        return len(layout.blocks)

    def attach(self, layout: Layout) -> bool:
        """Change `layout.model` in place before the stage trains (e.g. insert adapters);
        True when it did, so the caller takes the layout anew. Default: nothing."""
        return False

    def detach(self, model: torch.nn.Module) -> None:
        """Undo `attach` in place after the stage, keeping what was learned (merge adapters):
        the model must be a plain timm model with its original parameter names again."""
