"""Sweeps: the sweep process (sweeper, workers, sampling, outcome, summary, lock, storage, the
adapter to the stock Hydra Optuna sweeper) and, in trial.py, what runs inside a trial."""
