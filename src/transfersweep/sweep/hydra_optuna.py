"""The one adapter to the stock Hydra Optuna sweeper (hydra-optuna-sweeper 1.4), whose code
lives in a private module (`_impl`): nothing else in transfersweep imports it.

From it we reuse the parsing of the search space (`choice(...)`, `interval(...)`, `tag(log,
...)` in hydra.sweeper.params and on the command line), the sampler and direction settings,
and the launcher set-up; the trial loop is transfersweep's own (sweeper.py).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import DictConfig


@dataclass
class SearchSpace:
    distributions: dict[str, Any]  # name -> optuna distribution, sampled per trial
    fixed: dict[str, Any]  # name -> value, the same in every trial
    fixed_overrides: list[str]  # overrides that are not key=value (deletions)
    grid: bool  # GridSampler: every combination once, nothing else sampled
    # search.backbones entry -> its job overrides (sweep/backbones.py); {}: not searched
    backbones: dict[str, tuple[str, ...]] = field(default_factory=dict)


class StockOptunaSweeper(OptunaSweeperImpl):
    """The stock sweeper's state and set-up, with its parsing behind public names."""

    def search_space(self, arguments: list[str]) -> SearchSpace:
        """hydra.sweeper.params plus the command line; a value fixed on the command line
        replaces its search dimension. With a grid sampler, the sampler is built here and
        n_trials is capped at the number of cells."""
        self._process_searchspace_config()
        dists, fixed, fixed_overrides = create_params_from_overrides(
            self._parse_sweeper_params_config() + list(arguments)
        )
        for name in fixed:
            dists.pop(name, None)
        grid = (
            isinstance(self.sampler, functools.partial)
            and self.sampler.func == optuna.samplers.GridSampler
        )
        if grid:
            cells = {name: self._to_grid_sampler_choices(d) for name, d in dists.items()}
            self.sampler = self.sampler(cells)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in cells.values()))
        return SearchSpace(dists, fixed, fixed_overrides, grid)

    def directions(self) -> list[str]:
        return self._get_directions()

    def launch(self, overrides: Sequence[Sequence[str]]) -> list[Any]:
        returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
        self.job_idx += len(returns)
        return returns

    def compose(self, overrides: list[str]) -> DictConfig:
        """A job's config for these overrides, as the launcher would compose it; composed once
        per list of overrides (the backbone ranking, the search space and the first trials all
        ask for each backbone's), a copy each time (callers may change theirs)."""
        cache = self.__dict__.setdefault("_composed", {})
        key = tuple(overrides)
        if key not in cache:
            cache[key] = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        return copy.deepcopy(cache[key])
