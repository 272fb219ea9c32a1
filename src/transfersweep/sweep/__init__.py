"""Sweeps: the Optuna sweeper extension, conditional search space, trial link, summary."""
