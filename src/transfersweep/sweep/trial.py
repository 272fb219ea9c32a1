"""Inside a sweep trial: the job's link to its own Optuna trial.

The Hydra Optuna sweeper gives the task function only its overrides; the transfersweep
sweeper adds the trial's number and storage id (`trial.number`, `trial.id`), and the job
reads the study's name and storage from hydra.sweeper (never passed as overrides, so a
password in the storage URL never lands in a job's overrides.yaml). Through this link the
job attaches its results to the trial (user attributes the summary reads back) and reports
each epoch to the pruner. Everything here runs in the trial's process; the sweep process's
side is transfersweep.sweep.workers.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from transfersweep.tracking import uninterrupted


@functools.lru_cache(maxsize=4)
def _storage(url: str):
    import optuna

    return optuna.storages.get_storage(url)


@dataclass(frozen=True)
class TrialLink:
    number: int | None = None  # Optuna trial number (what users see)
    id: int | None = None  # the trial's id in the storage
    study: str | None = None
    storage: str | None = None
    parallel_jobs: int = 1  # trials that run at once in this machine's launcher (joblib)

    @property
    def active(self) -> bool:
        return self.id is not None and bool(self.storage)

    @classmethod
    def from_hydra(cls, cfg: DictConfig) -> TrialLink:
        """Read (only) what this job is: a sweep trial, or a single run (inactive link)."""
        if cfg.trial.id is None:
            return cls()
        from hydra.core.hydra_config import HydraConfig

        from transfersweep.sweep.storage import storage_url

        if not HydraConfig.initialized():
            return cls(number=cfg.trial.number)
        hc = HydraConfig.get()
        joblib = "joblib" in str(hc.launcher.get("_target_", ""))
        return cls(
            number=cfg.trial.number,
            id=cfg.trial.id,
            study=hc.sweeper.get("study_name"),
            storage=storage_url(hc.sweeper.get("storage")),
            parallel_jobs=int(hc.launcher.get("n_jobs") or 1) if joblib else 1,
        )

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Attach `attrs` to this job's Optuna trial; a no-op outside a sweep."""
        if not self.active:
            return
        storage = _storage(self.storage)
        for k, v in attrs.items():
            storage.set_trial_user_attr(self.id, k, v)

    def pruning(self, pruner: DictConfig) -> Pruning | None:
        """Per-epoch reports to the pruner, or None (single run, or pruner.name=none)."""
        if not self.active or pruner.name == "none":
            return None
        return Pruning(self, pruner)


def make_pruner(p: DictConfig):
    import optuna

    if p.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    if p.name == "percentile":
        return optuna.pruners.PercentilePruner(
            p.percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    if p.name == "threshold":
        return optuna.pruners.ThresholdPruner(lower=p.threshold, n_warmup_steps=p.n_warmup_steps)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


class Pruning:
    """Reports each epoch's target val accuracy to the live Optuna trial and raises
    optuna.TrialPruned when the pruner says so.

    A live trial is needed: a FrozenTrial from study.trials always answers should_prune() False.
    """

    def __init__(self, link: TrialLink, pruner: DictConfig):
        import optuna

        study = optuna.load_study(
            study_name=link.study, storage=_storage(link.storage), pruner=make_pruner(pruner)
        )
        self.trial = optuna.trial.Trial(study, link.id)

    def replay(self, reports: list[list[float]]) -> None:
        """A resumed trial's earlier epochs (reported by the trial it continues), without
        asking the pruner again: they passed then."""
        with uninterrupted():
            for epoch, value in reports:
                self.trial.report(value, int(epoch))

    def report(self, value: float, epoch: int) -> None:
        with uninterrupted():  # a store write: Ctrl-C waits for it (tracking.uninterrupted)
            self.trial.report(value, epoch)
            prune = self.trial.should_prune()
        if prune:
            import optuna

            raise optuna.TrialPruned(f"pruned at epoch {epoch} (target val score {value:.4f})")
