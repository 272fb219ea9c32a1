"""Many workers, one study: W worker processes start the same sweep command at once.

For each store and W, prints whether the study ended with exactly the requested trials (numbers
0..n-1, each once, all COMPLETE, one FINISHED MLflow run each), lock errors seen in the logs, and
the wall time. Trials are tiny (1 epoch of timm's test_resnet at 16 px, about a second), the
worst case for store contention. SQLite: the optuna.db and mlflow.db files of one machine;
PostgreSQL: a throwaway cluster (tests/servers.py) holding the study, plus an MLflow server on
it. `make bench ARGS=workers` (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, report

sys.path.insert(0, str(ROOT / "tests"))

TRIAL = [
    "-m", "sweep=paradigm", "backbone=tiny", "data.image_size=16", "trainer.source_epochs=1",
    "trainer.target_epochs=1", "trainer.device=cpu", "trainer.threads=1", "pruner.name=none",
    "hydra.sweeper.study_name=bench", "hydra.sweeper.confirm.top_k=0",
]  # fmt: skip
LOCK_WORDS = ("database is locked", "deadlock", "could not serialize", "duplicate key")


def _round(workers: int, n: int, out: Path, extra: list[str]) -> tuple[bool, int, float]:
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "transfersweep.train",
                *TRIAL,
                f"hydra.sweeper.n_trials={n}",
                f"paths.outputs={out}",
                *extra,
            ],
            cwd=out,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )  # fmt: skip
        for _ in range(workers)
    ]
    logs = [p.communicate()[0] for p in procs]
    seconds = time.perf_counter() - t0
    errors = sum(w in log for log in logs for w in LOCK_WORDS)
    ok = all(p.returncode == 0 for p in procs)
    return ok, errors, seconds


def _check(storage: str, tracking: str, n: int) -> str:
    import optuna
    from mlflow.tracking import MlflowClient

    trials = optuna.load_study(study_name="bench", storage=storage).trials
    numbers = sorted(t.number for t in trials)
    complete = sum(t.state.name == "COMPLETE" for t in trials)
    client = MlflowClient(tracking_uri=tracking)
    exp = client.get_experiment_by_name("transfersweep")
    found = client.search_runs([exp.experiment_id], max_results=5000)
    children = [r for r in found if r.data.tags.get("transfersweep.role") != "sweep"]
    finished = sum(r.info.status == "FINISHED" for r in children)
    exact = numbers == list(range(n)) and complete == n and finished == n == len(children)
    return f"{'exact' if exact else 'WRONG'} {len(trials)}/{n} trials, {finished} runs"


def main(workers=(1, 2, 4, 8), per_worker: int = 3) -> None:
    print("many workers, one study (each worker a process running the same sweep command)")
    for w in workers:
        n = w * per_worker
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            ok, errors, s = _round(w, n, out, [])
            result = _check(f"sqlite:///{out / 'optuna.db'}", f"sqlite:///{out / 'mlflow.db'}", n)
            report(f"SQLite, {w} workers x {per_worker} trials", f"{s:.0f}s", result,
                   f"exit ok={ok}, lock errors={errors}")  # fmt: skip
    try:
        from servers import mlflow_server, postgres

        with postgres() as pg:
            for w in workers:
                n = w * per_worker
                storage, backend = pg.create_db(f"optuna{w}"), pg.create_db(f"mlflow{w}")
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp)
                    with mlflow_server(backend, out / "art") as (url, _):
                        ok, errors, s = _round(
                            w, n, out, [f"hydra.sweeper.storage={storage}", f"tracking.uri={url}"]
                        )
                        result = _check(storage, url, n)
                    report(f"PostgreSQL + MLflow server, {w} workers x {per_worker} trials",
                           f"{s:.0f}s", result, f"exit ok={ok}, lock errors={errors}")  # fmt: skip
    except BaseException as e:  # pytest.skip (no PostgreSQL) is a BaseException
        print(f"  PostgreSQL: skipped ({type(e).__name__}: {e})")


if __name__ == "__main__":
    main()
