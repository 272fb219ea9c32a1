"""The same 10-trial TPE sweep (fixed sampler seed) with the median pruner and without:
target epochs trained (compute spent), wall time, and the best value each reached."""

from __future__ import annotations

import tempfile
from pathlib import Path

import optuna
from common import cli, report
from mlflow.tracking import MlflowClient

ARGS = [
    "-m",
    "sweep=paradigm",
    "regime=target_only",
    "backbone=resnet18",
    "trainer.target_epochs=30",
    "optimizer.lr=tag(log, interval(1e-5, 1e-1))",
    "hydra.sweeper.n_trials=10",
    "hydra.sweeper.study_name=prune",
    "hydra.sweeper.confirm.top_k=0",  # the search alone is measured
    "pruner.n_startup_trials=3",
    "pruner.n_warmup_steps=5",
]


def spent(tmp: str) -> tuple[int, float, int]:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("transfersweep")
    epochs = 0
    for r in client.search_runs([exp.experiment_id], "tags.trial != ''"):
        epochs += len(client.get_metric_history(r.info.run_id, "target/val_acc"))
    study = optuna.load_study(study_name="prune", storage=f"sqlite:///{tmp}/optuna.db")
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    return epochs, study.best_value, pruned


def main() -> float:
    out = {}
    for pruner in ("none", "median"):
        with tempfile.TemporaryDirectory() as tmp:
            seconds, res = cli([*ARGS, f"pruner.name={pruner}", f"paths.outputs={tmp}"], Path(tmp))
            assert res.returncode == 0, res.stderr[-2000:]
            out[pruner] = (seconds, *spent(tmp))
    (t0, e0, b0, _), (t1, e1, b1, p1) = out["none"], out["median"]
    report(
        "10-trial sweep: target epochs trained, median pruner / none",
        f"{e1 / e0:.2f}",
        "",
        f"{e1} vs {e0} epochs, {p1} pruned; wall {t1:.0f}s vs {t0:.0f}s",
    )
    report("  best target val_acc reached, median pruner vs none", f"{b1:.4f} vs {b0:.4f}")
    return e1 / e0


if __name__ == "__main__":
    main()
