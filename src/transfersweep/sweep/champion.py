"""The champion: the verdict's winner as a model anyone can load.

The winner's run (its confirmation run when the sweep confirmed, else its best search trial)
already logged the checkpoint of its best repeat (results._log_checkpoint: the repeat with
the highest val accuracy, a plain timm state dict in safetensors). We chose that over a refit
on more data: it is the model the verdict measured, it costs no extra training, and the val
split stays untouched by training. It is logged beside the checkpoint as an MLflow pyfunc
model *from code* (transfersweep.champion_model: nothing pickled) and registered as a new
version of the model named after the study, with the alias `champion`; the verdict and the
metrics go into the version's description and tags.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("transfersweep.sweep")

ALIAS = "champion"


def _requirements() -> list[str]:
    """Written into the model's requirements without MLflow's inference (which loads it)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("torch", "timm", "safetensors", "mlflow", "pandas")] + [
        "transfersweep"
    ]


def register(client: Any, name: str, winner: Any, verdict: Any, study: str) -> str | None:
    """Register `winner`'s run as a new version of `name` with alias champion; returns the
    version, or None when the run has no checkpoint. A champion already pointing at this run
    is kept (re-running a finished sweep registers nothing new)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    run_id = winner.run_id
    try:
        current = client.get_model_version_by_alias(name, ALIAS)
        if current.run_id == run_id:
            log.info("champion: %s version %s (run %s) unchanged", name, current.version, run_id)
            return str(current.version)
    except MlflowException:
        pass  # no such model or alias yet
    if "checkpoint" not in {a.path for a in client.list_artifacts(run_id)}:
        log.info(
            "champion: run %s logged no checkpoint (tracking.log_checkpoint): none registered",
            run_id,
        )
        return None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a clean sweep log
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(client.download_artifacts(run_id, "checkpoint", tmp))
        model_dir = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            str(model_dir),
            python_model=str(Path(__file__).parents[1] / "champion_model.py"),
            artifacts={
                "weights": str(ckpt / "model.safetensors"),
                "config": str(ckpt / "config.yaml"),
            },
            pip_requirements=_requirements(),
        )
        client.log_artifacts(run_id, str(model_dir), "model")
    try:
        client.create_registered_model(
            name, description=f"Champions of transfersweep study {study!r}"
        )
    except MlflowException:
        pass  # exists
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    objective, on_test = winner.objective, winner.on("test")
    test = winner.est(on_test)
    backbone = client.get_run(run_id).data.tags.get("backbone", "")  # the timm name it trained
    tags = {
        "paradigm": winner.paradigm.name,
        "backbone": backbone,
        "objective": objective,
        objective: f"{winner.value:.4f}",
        f"{objective}_ci95": "" if winner.ci is None else f"{winner.ci:.4f}",
        on_test: "" if test is None else f"{test.mean:.4f}",
        "n_repeats": str(winner.n),
        "verdict_source": verdict.source,
        "study": study,
    }
    description = (
        f"**Verdict**: {verdict.text}\n\n"
        f"{winner.paradigm.name} ({backbone}): target {objective} {winner.value:.4f}"
        + (f" ± {winner.ci:.4f} (95% CI)" if winner.ci is not None else "")
        + (f", {on_test} {test.mean:.4f}" if test is not None else "")
        + f" over {winner.n} repeat(s); weights: the best repeat's checkpoint of run {run_id}."
    )
    mv = client.create_model_version(
        name, source, run_id=run_id, tags=tags, description=description[:5000]
    )
    client.set_registered_model_alias(name, ALIAS, mv.version)
    log.info("champion: %s version %s (@%s) <- run %s", name, mv.version, ALIAS, run_id)
    return str(mv.version)
