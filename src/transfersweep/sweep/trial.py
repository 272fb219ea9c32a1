"""A job's link to its own Optuna trial (the sweeper passes trial.number / trial.id).

The Hydra Optuna sweeper gives the task function only its overrides; the
transfersweep sweeper adds the trial's number and storage id to them, so the
job can attach its results (mean, std, test metric, MLflow run id) to the trial
as user attributes, which the sweeper's summary reads back.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig


@functools.lru_cache(maxsize=4)
def _storage(url: str):
    import optuna

    return optuna.storages.get_storage(url)


def in_sweep(cfg: DictConfig) -> bool:
    return cfg.trial.id is not None and bool(cfg.trial.storage)


def set_attrs(cfg: DictConfig, attrs: Mapping[str, Any]) -> None:
    """Attach `attrs` to this job's Optuna trial; a no-op outside a sweep."""
    if not in_sweep(cfg):
        return
    storage = _storage(cfg.trial.storage)
    for k, v in attrs.items():
        storage.set_trial_user_attr(cfg.trial.id, k, v)


def storage_url(url: str | None) -> str | None:
    """Make a sqlite URL absolute (every job opens the same file) and create its folder."""
    if not url or not url.startswith("sqlite:///"):
        return url
    from pathlib import Path

    path = (
        Path(url.removeprefix("sqlite:///")).expanduser().resolve()
    )  # "/abs" stays, "rel" -> cwd/rel
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def fill_from_hydra(cfg: DictConfig) -> None:
    """In a sweep job, read the study name and storage from hydra.sweeper (not passed as overrides,
    so a password in the storage URL never lands in a job's overrides.yaml), and give each of
    n parallel joblib workers 1/n of the cores unless trainer.threads is set."""
    if cfg.trial.id is None:
        return
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    cfg.trial.study = cfg.trial.study or hc.sweeper.get("study_name")
    cfg.trial.storage = cfg.trial.storage or storage_url(hc.sweeper.get("storage"))
    parallel = (
        int(hc.launcher.get("n_jobs") or 1)
        if "joblib" in str(hc.launcher.get("_target_", ""))
        else 1
    )
    if parallel > 1 and cfg.trainer.threads is None:  # share the cores, don't oversubscribe them
        import os

        cfg.trainer.threads = max(1, (os.cpu_count() or 1) // parallel)


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
    optuna.TrialPruned when the pruner says so. Inert outside a sweep or with pruner.name=none.

    A live trial is needed: a FrozenTrial from study.trials always answers should_prune() False.
    """

    def __init__(self, cfg: DictConfig):
        self.trial = None
        if in_sweep(cfg) and cfg.pruner.name != "none":
            import optuna

            study = optuna.load_study(
                study_name=cfg.trial.study,
                storage=_storage(cfg.trial.storage),
                pruner=make_pruner(cfg.pruner),
            )
            self.trial = optuna.trial.Trial(study, cfg.trial.id)

    def report(self, value: float, epoch: int) -> None:
        if self.trial is None:
            return
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            import optuna

            raise optuna.TrialPruned(f"pruned at epoch {epoch} (target val_acc {value:.4f})")
