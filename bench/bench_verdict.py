"""Time to a verdict: the same small sweep as transfersweep runs it, and naively.

The sweep: every cell of 2 regimes x 3 strategies (a grid, so both runs train the same cells)
on the digits task (resnet18 from scratch, 32 px), 3 paired repeats each, the top 2 confirmed
on 3 fresh repeats, the verdict. Run twice:

- **transfersweep**: feature and prefix caches, pretraining trained once and reused, the
  median pruner (2 startup trials, 3 warm-up epochs);
- **naive**: each trial a plain run from scratch: caches off, reuse off, no pruning.

Prints both wall times, their ratio, both verdicts (they should name the same winner), and the
floor: the training seconds the real sweep's runs could not skip (each run's source and target
stages as they ran, caches and reuse included), against which the rest is set-up, tracking and
bookkeeping. `make bench ARGS=verdict` (about 5 minutes on 2 cores); `python
bench/bench_verdict.py --real`: the same on the real task (mnist, lite0, target_only x
last_layer / lp_ft / full, 20 epochs; about 20 minutes).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import cli, report
from mlflow.tracking import MlflowClient

ARGS = [
    "-m", "sweep=grid", "data=digits", "backbone=resnet18", "data.image_size=32",
    "regime=pretrain_finetune,target_only", "search.strategies=[last_layer,last_blocks,full]",
    "trainer.repeats=3", "trainer.source_epochs=5", "trainer.target_epochs=10",
    "hydra.sweeper.study_name=verdict", "hydra.sweeper.confirm.top_k=2",
    "hydra.sweeper.confirm.repeats=3", "hydra.sweeper.register_champion=false",
]  # fmt: skip
# --real: the real task instead (ImageNet EfficientNet-Lite0 on real MNIST 5-9, 5 shots, 64 px):
# target_only x the three strategies that matter there, 20 epochs (docs/real-task.md)
REAL_TASK = [
    "-m", "sweep=grid", "data=mnist", "backbone=lite0", "regime=target_only",
    "search.strategies=[last_layer,lp_ft,full]", "trainer.repeats=3", "trainer.target_epochs=20",
    "hydra.sweeper.study_name=verdict", "hydra.sweeper.confirm.top_k=2",
    "hydra.sweeper.confirm.repeats=3", "hydra.sweeper.register_champion=false",
]  # fmt: skip
REAL = ["pruner.name=median", "pruner.n_startup_trials=2", "pruner.n_warmup_steps=3"]
NAIVE = ["trainer.feature_cache=false", "trainer.reuse_pretrain=false", "pruner.name=none"]


def _read(tmp: str) -> tuple[str, float]:
    """The parent's verdict, and the training seconds of every trial and confirmation run."""
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("transfersweep")
    found = client.search_runs([exp.experiment_id], max_results=1000)
    parent = next(r for r in found if r.data.tags.get("transfersweep.role") == "sweep")
    trained = sum(r.data.metrics.get("run_seconds", 0.0) for r in found if r is not parent)
    return parent.data.tags.get("best_paradigm", "-"), trained


def main(real_task: bool = False) -> float:
    args = REAL_TASK if real_task else ARGS
    print(f"time to a verdict on {'the real task (mnist, lite0)' if real_task else 'digits'}")
    out = {}
    for name, extra in (("transfersweep", REAL), ("naive", NAIVE)):
        with tempfile.TemporaryDirectory() as tmp:
            seconds, res = cli([*args, *extra, f"paths.outputs={tmp}"], Path(tmp))
            assert res.returncode == 0, res.stderr[-3000:]
            out[name] = (seconds, *_read(tmp))
    (real, winner, floor), (naive, naive_winner, _) = out["transfersweep"], out["naive"]
    report("time to a verdict: transfersweep / naive", f"{real / naive:.2f}", "< 1",
           f"{real:.0f}s vs {naive:.0f}s")  # fmt: skip
    report("  winners", "agree" if winner == naive_winner else "DIFFER", "",
           f"{winner} vs {naive_winner}")  # fmt: skip
    report("  transfersweep's wall / its floor (training it could not skip)",
           f"{real / floor:.2f}", "", f"floor {floor:.0f}s")  # fmt: skip
    return real / naive


if __name__ == "__main__":
    import sys

    main(real_task="--real" in sys.argv[1:])
