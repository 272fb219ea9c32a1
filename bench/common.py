"""Shared helpers for the benchmarks: config composition, timing, CLI runs, result lines."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import transfersweep.train  # noqa: F401  (registers the schema)

    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        return hydra_compose("train", overrides=overrides)


def cli(args: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "transfersweep.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - t, res


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def report(name: str, value: str, target: str = "", note: str = "") -> None:
    print(f"  {name:<58} {value:>14}  {target:<12} {note}", flush=True)
