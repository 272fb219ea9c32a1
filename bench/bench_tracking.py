"""Share of a trial's wall time spent in MLflow calls (SQLite store, checkpoint included).

Every MlflowClient method the trial calls is timed, and so is waiting for the batches queued
asynchronously (per-epoch metrics); the store and experiment are created
first, since a new store's one-off schema migration is not a per-trial cost. Target < 2%.
"""

from __future__ import annotations

import functools
import tempfile
import threading
import time

from common import compose, report
from mlflow.tracking import MlflowClient

from transfersweep import tracking, train

SPENT = {"seconds": 0.0, "calls": 0}
_DEPTH = threading.local()  # a call inside a timed call (flush -> log_batch) is counted once


def _timed(fn):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        depth = getattr(_DEPTH, "n", 0)
        _DEPTH.n = depth + 1
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            _DEPTH.n = depth
            if depth == 0:
                SPENT["seconds"] += time.perf_counter() - t0
                SPENT["calls"] += 1

    return wrapper


def main() -> float:
    for name in (
        "create_run",
        "log_batch",
        "log_artifacts",
        "log_dict",
        "log_text",
        "set_terminated",
        "get_experiment_by_name",
    ):
        setattr(MlflowClient, name, _timed(getattr(MlflowClient, name)))
    tracking.Run.flush = _timed(tracking.Run.flush)  # waiting for queued (asynchronous) batches
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(
            [
                "backbone=resnet18",
                "trainer.source_epochs=3",
                "trainer.target_epochs=20",
                f"paths.outputs={tmp}",
            ]
        )
        MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db").create_experiment(
            "transfersweep", artifact_location=f"file://{tmp}/mlartifacts"
        )
        SPENT.update(seconds=0.0, calls=0)
        t0 = time.perf_counter()
        train.run(cfg)
        total = time.perf_counter() - t0
    share = SPENT["seconds"] / total
    report(
        "MLflow share of a trial's time (resnet18, 3 + 20 epochs, SQLite)",
        f"{100 * share:.2f}%",
        "< 2%",
        f"{SPENT['seconds']:.2f}s in {SPENT['calls']} calls of {total:.1f}s",
    )
    return share


if __name__ == "__main__":
    main()
