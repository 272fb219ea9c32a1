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
    so a password in the storage URL never lands in a job's overrides.yaml)."""
    if cfg.trial.id is None:
        return
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    sweeper = HydraConfig.get().sweeper
    cfg.trial.study = cfg.trial.study or sweeper.get("study_name")
    cfg.trial.storage = cfg.trial.storage or storage_url(sweeper.get("storage"))
