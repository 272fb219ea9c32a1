"""Failures inside training: out of memory fails the trial with a hint and the sweep goes on."""

from __future__ import annotations

import resource

import optuna
import pytest

from conftest import FAST, cli, compose, runs
from transfersweep.errors import TrainingError
from transfersweep.memory import memory_guard

LIMIT = 6000 * 2**20  # address space: the sweep itself peaks near 4.5 GB (torch maps a lot)


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def test_out_of_memory_error_names_the_settings_to_lower():
    """What torch raises on a GPU that is full becomes one line with the settings to change."""
    cfg = compose([*FAST, "data.batch_size=512", "trainer.precision=fp32"])

    def full_gpu():
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79 GiB total)")

    with pytest.raises(TrainingError) as e:
        memory_guard(cfg, "training", full_gpu)
    assert str(e.value).startswith("out of memory while training (CUDA out of memory. Tried")
    assert "data.batch_size (now 512)" in str(e.value) and "trainer.precision=bf16" in str(e.value)
    with pytest.raises(ValueError):  # anything else passes through unchanged
        memory_guard(cfg, "training", lambda: int("x"))


@pytest.mark.slow  # a sweep under a real address-space cap
def test_out_of_memory_fails_the_trial_with_a_hint_and_the_sweep_goes_on(tmp_path):
    """A real allocation failure (the process's address space is capped): a 192 px batch of 512
    cannot fit; the 16 px trial runs in the same process and finishes."""
    res = cli(
        ["-m", "sweep=grid", "backbone=tiny",
         "data.image_size=192,16", "data.batch_size=512", "trainer.source_epochs=1",
         "trainer.target_epochs=1", "trainer.device=cpu", "trainer.threads=1",
         "regime=pretrain_finetune", "freeze=full", f"paths.outputs={tmp_path}"],
        cwd=tmp_path, preexec_fn=_limited,
    )  # fmt: skip
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    study = optuna.load_study(
        study_name="grid-digits-test_resnet", storage=f"sqlite:///{tmp_path / 'optuna.db'}"
    )
    by_size = {t.params["data.image_size"]: t for t in study.trials}
    oom = by_size[192]
    assert oom.state == optuna.trial.TrialState.FAIL
    assert "out of memory while training" in oom.user_attrs["error"]
    assert "lower data.batch_size (now 512) or data.image_size (now 192)" in oom.user_attrs["error"]
    assert by_size[16].state == optuna.trial.TrialState.COMPLETE
    _, found = runs(tmp_path)
    failed = next(r for r in found if r.data.tags.get("trial") == str(oom.number))
    assert failed.info.status == "FAILED" and "out of memory" in failed.data.tags["error"]
    assert "Traceback" not in log
