"""Sharing the cores between runs on one machine (transfersweep.cores): real processes."""

from __future__ import annotations

import subprocess
import sys

from transfersweep import cores


def test_a_run_beside_another_takes_its_share_and_a_dead_ones_entry_goes(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERSWEEP_RUNS_DIR", str(tmp_path))
    alone = cores.share()
    assert cores.running() == 0
    with cores.registered():
        assert cores.running() == 1 and cores.share() == alone  # alone: torch's default
        with cores.registered():  # nested: the same process counts once
            assert cores.running() == 1
        assert cores.running() == 1
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            (tmp_path / f"transfersweep-runs-{__import__('os').getuid()}" / str(other.pid)).touch()
            assert cores.running() == 2
            assert cores.share() == max(1, min(alone, cores.available()) // 2)
        finally:
            other.kill()
            other.wait()
        assert cores.running() == 1  # the dead process's entry is removed
    assert cores.running() == 0


def test_blas_pools_get_the_share_before_they_load_and_loaders_stay_within_it(tmp_path):
    # a fresh interpreter: numpy/torch not loaded yet, as when the entrypoint starts; one other
    # live run registered, so this one's share is half the cores (at least 1)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = tmp_path / f"transfersweep-runs-{__import__('os').getuid()}"
        folder.mkdir()
        (folder / str(other.pid)).touch()
        code = (
            "import os; from transfersweep import cores; set_ = cores.limit_native();"
            "import numpy; print(set_.get('OPENBLAS_NUM_THREADS'), os.environ['MKL_NUM_THREADS'],"
            " 'OMP_NUM_THREADS' in set_, cores.limit_native())"
        )
        env = {k: v for k, v in __import__("os").environ.items() if k not in cores.NATIVE}
        env |= {"TRANSFERSWEEP_RUNS_DIR": str(tmp_path), "MKL_NUM_THREADS": "7"}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
    finally:
        other.kill()
        other.wait()
    share = str(max(1, cores.available() // 2))
    assert out == [share, "7", "False", "{}"]  # yours kept; torch's OMP left to share(); once
    assert cores.loader_workers(4, 1) == 1 and cores.loader_workers(2, 8) == 2
    assert cores.loader_workers(3, None) == 3
