"""The built wheel works without the source tree: installed into a fresh virtual environment
(that borrows this environment's installed dependencies rather than installing 5 GB again),
`transfersweep` runs from another directory with the configs shipped inside the package and
writes outputs/ under the current directory."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def _run(args: list, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    res = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, f"{args}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh venv with only the wheel installed (dependencies borrowed)."""
    tmp = tmp_path_factory.mktemp("package")
    _run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
          "-q", "-w", str(tmp / "dist")], cwd=tmp)  # fmt: skip
    (wheel,) = (tmp / "dist").glob("transfersweep-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    site = Path(
        _run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
             cwd=tmp).stdout.strip()
    )  # fmt: skip
    # A plain path line: the dependencies' folder joins sys.path, but its .pth files (among
    # them the editable install of the source tree) are not processed.
    (site / "_borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
          "--no-deps", "-q", str(wheel)], cwd=tmp)  # fmt: skip
    return venv / "bin"


def test_wheel_runs_from_any_directory(installed, tmp_path):
    where = _run(
        [str(installed / "python"), "-c",
         "import transfersweep.train as t, pathlib; print(t.__file__); "
         "print((pathlib.Path(t.__file__).parent / 'conf' / 'train.yaml').is_file())"],
        cwd=tmp_path,
    ).stdout.split()  # fmt: skip
    assert str(ROOT) not in where[0] and "site-packages" in where[0]
    assert where[1] == "True"  # the configs ship inside the package
    helped = _run([str(installed / "transfersweep"), "--help"], cwd=tmp_path).stdout
    assert "== Configuration groups (group=option) ==" in helped  # from the packaged conf/
    assert (
        "freeze: bitfit, full, gradual, last_blocks, last_layer, lora, lp_ft, norm, surgical"
        in helped
    )
    small = ["backbone=tiny", "data.image_size=16", "trainer=fast", "trainer.device=cpu"]
    run = _run([str(installed / "transfersweep"), *small], cwd=tmp_path)
    assert "done: pretrain_finetune+full | test_resnet on digits" in run.stdout + run.stderr
    sweep = _run(
        [str(installed / "transfersweep"), "-m", "sweep=paradigm", "hydra.sweeper.n_trials=2",
         *small],
        cwd=tmp_path,
    )  # fmt: skip
    assert "trial 2/2 [#1]" in sweep.stdout + sweep.stderr
    out = tmp_path / "outputs"
    assert (out / "mlflow.db").is_file() and (out / "optuna.db").is_file()
    assert list(out.glob("runs/*/*/.hydra/config.yaml")) and list(out.glob("sweeps/*/*/trial-1"))
