"""Shared fixtures: real Hydra composition, real MLflow stores in temp dirs, tiny timm models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Tiny and quick: timm's test ResNet at 16 px, one epoch per stage.
FAST = [
    "backbone=tiny",
    "trainer.resume_every_s=0",  # every epoch saved: the resume tests interrupt at an epoch
    "data.image_size=16",
    "trainer.source_epochs=1",
    "trainer.target_epochs=2",
    "trainer.device=cpu",
    "trainer.threads=1",
]

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # in-process tests never reach for the hub


def compose(overrides: list[str], outputs: Path | None = None):
    """Compose conf/train.yaml exactly as the entrypoint does (schema included)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import transfersweep.train  # noqa: F401  (registers the schema)

    extra = [f"paths.outputs={outputs}"] if outputs else []
    with initialize_config_dir(config_dir=str(CONF)):
        return hydra_compose("train", overrides=overrides + extra)


def cli(
    args: list[str],
    cwd: Path,
    timeout: float = 600,
    env: dict | None = None,
    module: str = "transfersweep.train",
    **popen: Any,
) -> subprocess.CompletedProcess:
    """Run a real entrypoint (`python -m <module>`: train by default, predict, server) in a
    fresh process; `popen`: more subprocess options (preexec_fn, ...)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        **popen,
    )


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    """The real entrypoint in a fresh process, left running; its output (stdout and stderr
    together) read as it comes: for tests that signal, kill or run several at once."""
    return subprocess.Popen(
        [sys.executable, "-m", "transfersweep.train", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def runs(outputs: Path, experiment: str = "transfersweep"):
    """All MLflow runs of the default store under `outputs`, via the real client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{outputs / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return client, []
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def load_study(outputs: Path, name: str):
    """The Optuna study `name` in the default storage under `outputs`."""
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{outputs / 'optuna.db'}")


def sweep_parent(found: list):
    """The one sweep parent run among `found` (runs()[1])."""
    (parent,) = [r for r in found if r.data.tags.get("transfersweep.role") == "sweep"]
    return parent


def child_runs(found: list, parent, confirm: bool = False) -> list:
    """The parent's trial runs (or, confirm=True, its confirmation runs)."""
    return [
        r
        for r in found
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        and (r.data.tags.get("confirm") == "true") == confirm
    ]


def history(client, run, key: str) -> list[tuple[int, float]]:
    """A metric's (step, value) pairs of `run`, by step."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    out = tmp_path / "outputs"
    out.mkdir()
    return out


def write_image_folder(root: Path, classes: dict[str, int], size: int = 20, seed: int = 0) -> Path:
    """Class folders of small PNGs whose colour depends on the class (learnable, no download)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for ci, (name, n) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            base = np.zeros((size, size + 4, 3), dtype=np.uint8)
            base[..., ci % 3] = 200
            noise = rng.integers(0, 40, size=base.shape, dtype=np.uint8)
            Image.fromarray(base + noise).save(folder / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path):
    return lambda name, classes, **kw: write_image_folder(tmp_path / name, classes, **kw)
