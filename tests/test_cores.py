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
