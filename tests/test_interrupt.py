"""SIGTERM (or Ctrl-C) ends the MLflow run KILLED and the Optuna trial FAIL: nothing is left RUNNING."""

from __future__ import annotations

import signal
import time

import optuna
import pytest

from conftest import FAST, cli, runs, start_cli, sweep_parent

pytestmark = pytest.mark.slow  # signals and kill -9 of real sweep processes


def _wait_for_epoch(proc, marker: str, timeout: float = 120) -> str:
    """Read the output until a training epoch is under way."""
    seen = []
    deadline = time.time() + timeout
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            return "".join(seen)
        assert time.time() < deadline, "".join(seen)
    raise AssertionError("".join(seen))


def test_sigterm_during_a_run_ends_it_killed(tmp_path):
    proc = start_cli(
        [*FAST, "regime=target_only", "trainer.target_epochs=100000", f"paths.outputs={tmp_path}"],
        tmp_path,
    )
    _wait_for_epoch(proc, "[target] epoch")
    deadline = time.time() + 60
    while not list((tmp_path / "resume").glob("*/state.json")) and time.time() < deadline:
        time.sleep(0.01)  # an epoch's resume state is on disk
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == -signal.SIGINT, out[-2000:]  # unwound as Ctrl-C: 130 in a shell
    _, (r,) = runs(tmp_path)
    assert r.info.status == "KILLED"
    assert "SIGTERM" in r.data.tags["error"]
    # its last epoch stays on disk for the same command to continue (tests/test_resume.py)
    assert "resume state kept in" in out
    assert len(list((tmp_path / "resume").glob("*/state.json"))) == 1


def test_sigterm_during_a_sweep_fails_the_trial_and_keeps_finished_ones(tmp_path):
    args = [
        "-m",
        "sweep=grid",
        *FAST,
        "regime=target_only",
        "freeze=last_layer,full",
        "trainer.target_epochs=100000",  # the first trial runs until the signal
        f"paths.outputs={tmp_path}",
    ]
    proc = start_cli(args, tmp_path)
    _wait_for_epoch(proc, "[target] epoch")
    deadline = time.time() + 60
    while not list((tmp_path / "resume").glob("*/state.json")) and time.time() < deadline:
        time.sleep(0.01)  # an epoch's resume state is on disk
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == -signal.SIGINT, out[-2000:]  # unwound as Ctrl-C: 130 in a shell
    study = optuna.load_study(
        study_name="grid-digits-test_resnet", storage=f"sqlite:///{tmp_path / 'optuna.db'}"
    )
    (t,) = study.trials
    assert t.state == optuna.trial.TrialState.FAIL and "SIGTERM" in t.user_attrs["error"]
    _, found = runs(tmp_path)
    assert not any(r.info.status == "RUNNING" for r in found)
    parent = sweep_parent(found)
    child = next(r for r in found if r.data.tags.get("trial") == "0")
    assert child.info.status == "KILLED" and parent.info.status == "KILLED"
    assert "SIGTERM" in parent.data.tags["interrupted"]


def test_after_kill_9_a_resumed_sweep_marks_the_dead_trial_stale_and_goes_on(tmp_path):
    base = [
        "-m",
        "sweep=grid",
        *FAST,
        "regime=target_only",
        "freeze=last_layer,full",
        f"paths.outputs={tmp_path}",
    ]
    proc = start_cli([*base, "trainer.target_epochs=100000"], tmp_path)
    _wait_for_epoch(proc, "[target] epoch")
    proc.kill()  # SIGKILL: no handler runs, the trial and its MLflow run stay RUNNING
    proc.wait(timeout=30)
    res = cli([*base, "trainer.target_epochs=1"], cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "marked 1 stale trial(s)" in res.stdout + res.stderr
    study = optuna.load_study(
        study_name="grid-digits-test_resnet", storage=f"sqlite:///{tmp_path / 'optuna.db'}"
    )
    states = [t.state for t in study.trials]
    assert (
        states.count(optuna.trial.TrialState.FAIL) == 1
        and optuna.trial.TrialState.RUNNING not in states
    )
    dead = next(t for t in study.trials if t.state == optuna.trial.TrialState.FAIL)
    assert dead.user_attrs["error"].startswith("stale")
    # the dead trial's cell runs again (queued with the same parameters) and so does the other
    # cell: both evaluated once, the stale one kept as a FAIL record
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == dead.number)
    assert retry.params == dead.params and retry.state == optuna.trial.TrialState.COMPLETE
    assert {t.params["freeze"] for t in study.trials if t.state.name == "COMPLETE"} == {
        "last_layer",
        "full",
    }
    _, found = runs(tmp_path)
    assert not any(r.info.status == "RUNNING" for r in found)
    killed = next(r for r in found if r.data.tags.get("trial") == str(dead.number))
    assert killed.info.status == "KILLED" and killed.data.tags["error"].startswith("stale")
