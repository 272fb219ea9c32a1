"""Conditional search space, called by the sweeper as `fn(cfg, trial)` before a trial's overrides
are built: what it suggests becomes an override (hydra.sweeper.custom_search_space)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def conditional(cfg: DictConfig, trial: Any) -> None:
    """freeze.n_blocks only exists when freeze=last_blocks (sampled or fixed by the user)."""
    freeze = trial.params.get("freeze", trial.user_attrs.get("freeze"))
    if freeze == "last_blocks" and "freeze.n_blocks" not in trial.user_attrs:
        trial.suggest_int("freeze.n_blocks", cfg.search.n_blocks_low, cfg.search.n_blocks_high)
