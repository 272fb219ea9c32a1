"""Hydra plugin shim for the transfersweep sweeper (`hydra/sweeper=transfersweep`).

Hydra imports every module under `hydra_plugins` on start-up, so this one stays
light: Optuna and the implementation (transfersweep.sweep.sweeper) load only
when a sweep is instantiated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.config import Direction, OptunaSweeperConf
from omegaconf import DictConfig


@dataclass
class ConfirmConf:
    """After the search: re-run the best configuration of the top_k paradigms on `repeats`
    fresh repeats (transfersweep.sweep.confirm); 0 turns it off."""

    top_k: int = 0
    repeats: int = 5
    first_repeat: int = 1000  # fresh k-shot draws and seeds: the search uses 0 .. repeats-1


@dataclass
class TransferSweeperConf(OptunaSweeperConf):
    """The Optuna sweeper's settings, with sweep-level semantics for failures."""

    _target_: str = "hydra_plugins.transfersweep_sweeper.transfersweep_sweeper.TransferSweeper"
    direction: Any = Direction.maximize
    n_jobs: int = 1
    # Stop the sweep once more than this share of its ended trials failed (checked after
    # min_trials_for_failure_rate trials); failed trials never stop it below that.
    max_failure_rate: float = 0.5
    min_trials_for_failure_rate: int = 4
    summary: bool = True  # write the paradigm table and plots to the MLflow parent run
    # Many workers, one study: each worker stamps its running trials every heartbeat_s; a RUNNING
    # trial of another host whose stamp is older than stale_after_s is taken as dead (failed as
    # "stale" and run again). Same-host trials are judged at once by their process id.
    heartbeat_s: float = 30.0
    stale_after_s: float = 300.0
    confirm: ConfirmConf = field(default_factory=ConfirmConf)
    # Register the verdict's winner in the MLflow Model Registry as a new version of
    # `model_name` (null: the study's name) with alias `champion` (transfersweep.sweep.champion).
    register_champion: bool = True
    model_name: str | None = None
    # What each of `direction`'s entries optimises: the trial's objective (trainer.objective)
    # first, then other scores or what a run reports (target_seconds: the target stages'
    # seconds per repeat). sweep=pareto: [${trainer.objective}, target_seconds] with direction
    # [maximize, minimize].
    objectives: list[str] = field(default_factory=lambda: ["${trainer.objective}"])
    # A study resumed by name must be about the same data, backbone, objective and search
    # space (transfersweep.sweep.identity); true continues one that differs anyway.
    resume_changed: bool = False
    # A new study's first trial is the config's own paradigm and values (transfersweep.sweep.
    # default), and the verdict says where it ended; grids cover every cell anyway.
    default_first: bool = True
    # A wall-clock budget for the whole search, from the study's first trial ("30m", "2h",
    # seconds; null: none): no trial starts that a typical one would not finish in it, and the
    # confirmation runs in what is left or is cut with a note (transfersweep.sweep.budget).
    time_budget: Any = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="transfersweep", node=TransferSweeperConf, provider="transfersweep"
)


class TransferSweeper(Sweeper):
    def __init__(self, sampler: Any, **kwargs: Any) -> None:
        from hydra.utils import instantiate

        from transfersweep.sweep.sweeper import TransferSweeperImpl

        sampler = instantiate(
            sampler,
            _execution_whitelist_=("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*"),
        )
        self.sweeper = TransferSweeperImpl(sampler, **kwargs)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)
