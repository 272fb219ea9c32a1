"""Mid-run resume: an interrupted run continues from its last complete epoch and ends with
exactly the metrics, summary and checkpoint of a run that was never interrupted."""

from __future__ import annotations

import _thread
import glob
import json
import logging
import signal
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch

from conftest import FAST, cli, compose, runs, start_cli
from transfersweep import resume, train

# pretrain (source stage) then the target stage, twice (two repeats): a resume can land in the
# source stage, in any phase of the target stage, or in a later repeat
PARADIGM = [*FAST, "regime=pretrain_finetune", "trainer.repeats=2"]


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """These tests press Ctrl-C in-process (`_thread.interrupt_main`), which does nothing while
    SIGINT is SIG_IGN / SIG_DFL; in the full suite something earlier in the process leaves it
    so (seen in a fresh clone, not when these files run alone). Python's own handler back,
    and the change reported as a warning so it can be traced."""
    import warnings

    before = signal.getsignal(signal.SIGINT)
    if before is not signal.default_int_handler:
        warnings.warn(f"SIGINT handler was {before!r} before this test; restored", stacklevel=1)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


LP_FT = ["freeze=lp_ft", "freeze.probe_epochs=2"]
VOLATILE = ("images_per_s", "seconds")  # wall-clock measurements: never equal


def _saved_point(outputs: Path) -> dict | None:
    for f in glob.glob(str(outputs / "resume" / "*" / "state.json")):
        try:
            return json.loads(Path(f).read_text())["point"]
        except (OSError, ValueError):
            return None  # mid-rename
    return None


def _record(outputs: Path) -> dict:
    """The run's MLflow record: status, tags, each metric's (step, value) pairs, summary.json
    and the checkpoint's bytes. Values logged again at a step (the epoch a kill cut short, and
    the inputs a resumed run logs again) must be identical: the pairs are a set."""
    client, found = runs(outputs)
    (r,) = found
    run_id = r.info.run_id
    history = {}
    for k in r.data.metrics:
        if not any(v in k for v in VOLATILE):
            history[k] = sorted({(m.step, m.value) for m in client.get_metric_history(run_id, k)})
    root = Path(client.download_artifacts(run_id, "", str(outputs / f"dl-{run_id}")))
    summary = json.loads((root / "summary.json").read_text())
    for k in ("seconds", "target_seconds"):
        summary.pop(k)
    summary["record"].pop("seconds")
    weights = (root / "checkpoint" / "model.safetensors").read_bytes()
    return {"run": r, "history": history, "summary": summary, "weights": weights}


def _assert_same_results(resumed: dict, uninterrupted: dict) -> None:
    assert resumed["history"].keys() == uninterrupted["history"].keys()
    for k, pairs in uninterrupted["history"].items():
        assert resumed["history"][k] == pairs, k
    assert resumed["summary"] == uninterrupted["summary"]
    assert resumed["weights"] == uninterrupted["weights"]  # the logged checkpoint, bit for bit


def _interrupt_when(outputs: Path, reached) -> threading.Thread:
    """Ctrl-C (KeyboardInterrupt in the main thread) once the saved state reaches a point."""

    def watch() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            p = _saved_point(outputs)
            if p is not None and reached(p):
                _thread.interrupt_main()
                return
            time.sleep(0.002)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize(
    "strategy",
    [
        ["freeze=lp_ft", "freeze.probe_epochs=2"],  # pooled-feature probe, then everything
        ["freeze=gradual", "freeze.unfreeze_every=3"],  # block-boundary cache, phase by phase
        ["freeze=lora"],  # adapters attached (saved with them), merged at the end
    ],
    ids=["lp_ft", "gradual", "lora"],
)
def test_an_interrupted_run_resumes_where_it_stopped_with_identical_results(
    tmp_path, caplog, strategy
):
    caplog.set_level(logging.INFO, logger="transfersweep")
    args = [*PARADIGM, *strategy, "trainer.source_epochs=3", "trainer.target_epochs=24"]
    train.run(compose(args, tmp_path / "a"))
    b = tmp_path / "b"
    watcher = _interrupt_when(b, lambda p: p["repeat"] == 1 and p["epoch"] >= 4)
    with pytest.raises(KeyboardInterrupt):
        train.run(compose(args, b))
    watcher.join()
    saved = _saved_point(b)
    assert saved["repeat"] == 1 and 4 <= saved["epoch"] < 24, saved
    if strategy[0] == "freeze=lp_ft":
        assert saved["phase"] == 1  # in the fine-tuning phase, after the cached probe
    (killed,) = runs(b)[1]
    assert killed.info.status == "KILLED"
    caplog.clear()
    train.run(compose(args, b))
    assert f"resumed from epoch {saved['epoch']} (finetune, repeat 1)" in caplog.text
    assert "[pretrain] epoch" not in caplog.text  # nothing before the saved epoch runs again
    resumed = _record(b)
    r = resumed["run"]
    assert r.info.run_id == killed.info.run_id and r.info.status == "FINISHED"
    assert r.data.tags["resumed_from_epoch"] == str(saved["epoch"])
    assert "error" not in r.data.tags  # the interruption's tags went with it
    _assert_same_results(resumed, _record(tmp_path / "a"))
    assert not list((b / "resume").iterdir())  # state and lock removed at the end


def test_a_distilling_stage_resumes_with_its_teacher_trained_again_exactly(tmp_path, caplog):
    """The teacher (the previous stage's result) is not in the saved state: the stages before
    the resumed one train again from the same start, which gives the same teacher bit for bit,
    and the student continues from its saved epoch."""
    caplog.set_level(logging.INFO, logger="transfersweep")
    args = [*FAST, "regime=self_distill", "trainer.repeats=2", "trainer.target_epochs=24"]
    train.run(compose(args, tmp_path / "a"))
    b = tmp_path / "b"
    watcher = _interrupt_when(b, lambda p: (p["repeat"], p["stage"]) == (1, 1) and p["epoch"] >= 4)
    with pytest.raises(KeyboardInterrupt):
        train.run(compose(args, b))
    watcher.join()
    saved = _saved_point(b)
    assert (saved["repeat"], saved["stage"]) == (1, 1) and 4 <= saved["epoch"] < 24, saved
    caplog.clear()
    train.run(compose(args, b))
    assert f"resumed from epoch {saved['epoch']} (student, repeat 1)" in caplog.text
    assert "[teacher_r1] epoch  24/24" in caplog.text  # the teacher trained again, whole
    assert "[teacher] epoch" not in caplog.text and "[student] epoch" not in caplog.text
    assert f"[student_r1] epoch {saved['epoch']:3d}/24" not in caplog.text  # not again
    _assert_same_results(_record(b), _record(tmp_path / "a"))


def _kill_9_when(args: list[str], outputs: Path, reached) -> tuple[dict, str]:
    """Run the entrypoint until the saved state reaches a point, then SIGKILL it: no handler
    runs, nothing is flushed or cleaned. Returns the point saved last and the process's log."""
    proc = start_cli(args, outputs.parent)
    deadline = time.time() + 300
    while time.time() < deadline:
        p = _saved_point(outputs)
        if p is not None and reached(p):
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return _saved_point(outputs), proc.stdout.read()
        if proc.poll() is not None:
            raise AssertionError(f"ended before the kill: {proc.stdout.read()[-3000:]}")
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("the saved state never reached the point")


@pytest.mark.slow  # five training processes, two of them killed with SIGKILL
def test_kill_9_in_the_source_stage_then_in_a_later_repeat_resumes_exactly(tmp_path):
    args = [*PARADIGM, *LP_FT, "trainer.source_epochs=20", "trainer.target_epochs=40"]
    a, b = tmp_path / "a", tmp_path / "b"
    out = cli([*args, f"paths.outputs={a}"], tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    cmd = [*args, f"paths.outputs={b}"]
    first, _ = _kill_9_when(cmd, b, lambda p: p["repeat"] is None and p["epoch"] >= 3)
    assert first["repeat"] is None and first["epoch"] < 20  # in the source stage
    (dead,) = runs(b)[1]
    assert dead.info.status == "RUNNING"  # SIGKILL: nobody ended it
    second, log = _kill_9_when(cmd, b, lambda p: p["repeat"] == 1 and p["epoch"] >= 4)
    # the second process took the source stage up where the first died, not from epoch 1
    assert f"resumed from epoch {first['epoch']} (pretrain)" in log, log[-3000:]
    assert "[pretrain] epoch   1/20" not in log
    assert second["repeat"] == 1 and second["epoch"] < 40
    out = cli(cmd, tmp_path)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert f"resumed from epoch {second['epoch']} (finetune, repeat 1)" in log
    resumed = _record(b)
    assert resumed["run"].info.run_id == dead.info.run_id
    assert resumed["run"].info.status == "FINISHED"
    _assert_same_results(resumed, _record(a))
    assert not list((b / "resume").iterdir())


@pytest.mark.slow  # a sweep killed with SIGKILL, then the same command again
def test_a_killed_sweep_trial_is_resumed_by_its_retry(tmp_path):
    cells = [*FAST, "regime=target_only", "trainer.target_epochs=30", "pruner.name=median"]
    sweep = ["-m", "sweep=grid", *cells, "freeze=full", f"paths.outputs={tmp_path / 's'}"]
    killed_at, _ = _kill_9_when(sweep, tmp_path / "s", lambda p: p["epoch"] >= 4)
    out = cli(sweep, tmp_path)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert f"resumed from epoch {killed_at['epoch']}" in log
    study = optuna.load_study(
        study_name="grid-digits-test_resnet", storage=f"sqlite:///{tmp_path / 's' / 'optuna.db'}"
    )
    dead, retry = study.trials
    assert dead.state.name == "FAIL" and retry.state.name == "COMPLETE"
    assert sorted(retry.intermediate_values) == list(range(1, 31))  # replayed, then its own
    client, found = runs(tmp_path / "s")
    (child,) = [r for r in found if "trial" in r.data.tags]  # the dead trial's run, finished
    assert child.info.status == "FINISHED" and child.info.run_id == retry.user_attrs["run_id"]
    assert child.data.tags["trial"] == str(retry.number)
    assert child.data.tags["resumed_from_trial"] == str(dead.number)
    assert [m.step for m in client.get_metric_history(child.info.run_id, "target/val_acc")][
        -1
    ] == 30
    assert not list((tmp_path / "s" / "resume").iterdir())
    # the same paradigm run alone, never interrupted: the same objective
    single = tmp_path / "single"
    train_args = [*cells, "freeze=full", f"paths.outputs={single}"]
    out = cli(train_args, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (alone,) = runs(single)[1]
    assert retry.value == alone.data.metrics["val_acc"]


def test_a_torn_write_is_never_loaded_and_a_damaged_state_starts_afresh(tmp_path, caplog):
    cfg = compose(FAST, tmp_path)
    state = resume.open_run(cfg, None, None)
    weights = {"model/w": torch.arange(6.0)}
    state.commit(resume.Point(0, None, 0, 3), weights, {"note": "epoch 3"})
    state.keep()
    folder = state.dir
    (committed,) = [f for f in folder.glob("state-*.safetensors")]
    # a kill during the next commit: half a tensors file, half a state.json, never renamed
    (folder / "state-deadbeef.safetensors").write_bytes(committed.read_bytes()[:100])
    (folder / ".state.json.4242.tmp").write_text('{"point": {"epoch": 4')
    again = resume.open_run(cfg, None, None)
    assert again.point == resume.Point(0, None, 0, 3)
    assert torch.equal(again.saved.tensors["model/w"], weights["model/w"])
    assert sorted(f.name for f in folder.iterdir()) == sorted(["state.json", committed.name])
    again.keep()
    # the committed file damaged afterwards (a disk fault): said, and the run starts afresh
    committed.write_bytes(committed.read_bytes()[:50])
    fresh = resume.open_run(cfg, None, None)
    assert fresh.point is None and "unreadable" in caplog.text
    fresh.finish()
    assert not folder.exists()


def test_one_process_owns_a_state_and_resume_false_saves_none(tmp_path, caplog):
    cfg = compose(FAST, tmp_path)
    owner = resume.open_run(cfg, None, None)
    assert resume.open_run(cfg, None, None) is None  # same config, another run: goes without
    assert "another process is running this same config" in caplog.text
    owner.finish()
    successor = resume.open_run(cfg, None, None)  # the owner is done: the next run owns it
    assert successor is not None
    successor.finish()
    assert not list((tmp_path / "resume").iterdir())
    assert resume.open_run(compose([*FAST, "trainer.resume=false"], tmp_path), None, None) is None
    train.run(compose([*FAST, "regime=target_only", "trainer.resume=false"], tmp_path / "off"))
    assert not (tmp_path / "off" / "resume").exists()


def test_the_identity_is_the_config_and_study_not_the_trial_number():
    base = compose(FAST)
    renumbered = compose([*FAST, "trial.number=7", "trial.id=8", "tracking.parent_run_id=abc"])
    assert resume.key(base, None) == resume.key(renumbered, None)
    assert resume.key(base, None) != resume.key(base, "study-a")
    assert resume.key(base, None) != resume.key(compose([*FAST, "optimizer.lr=0.01"]), None)
    assert resume.key(base, None) == resume.key(compose([*FAST, "trainer.resume=false"]), None)


def test_ctrl_c_during_a_store_write_waits_for_the_write(tmp_path):
    """Ctrl-C inside SQLite's write transaction would leave it open: ending the run KILLED then
    failed with 'database is locked' and the run stayed RUNNING (found by the test above)."""
    from transfersweep import tracking

    cfg = compose(FAST, tmp_path)
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with tracking.start(cfg, "interrupted", {}) as run:
            run.log_metrics({"epoch_metric": 0.5}, step=3)
            with tracking.uninterrupted():
                _thread.interrupt_main()  # Ctrl-C arrives before the write below
                run.flush()
                reached.append("the write finished first")
            reached.append("not this")
    assert reached == ["the write finished first"]  # then the interrupt, at once
    (r,) = runs(tmp_path)[1]
    assert r.info.status == "KILLED" and r.data.metrics["epoch_metric"] == 0.5


@pytest.mark.parametrize("every_s, commits", [(0, 6), (3600, 0)])
def test_the_state_is_saved_at_its_interval(tmp_path, monkeypatch, every_s, commits):
    """Two repeats of 3 target epochs: every epoch at resume_every_s=0, none within an
    interval no epoch reaches; the metrics reach the store either way."""
    written: list[int] = []
    write = resume.Resume._write_commit

    def counted(self, tensors, text, extra, metrics):
        written.append(json.loads(text)["point"]["epoch"])
        return write(self, tensors, text, extra, metrics)

    monkeypatch.setattr(resume.Resume, "_write_commit", counted)
    args = [*FAST, "regime=target_only", "trainer.repeats=2", "trainer.target_epochs=3",
            f"trainer.resume_every_s={every_s}"]  # fmt: skip
    train.run(compose(args, tmp_path))
    assert len(written) == commits, written
    assert written == [1, 2, 3] * 2 * (every_s == 0)
    (run,) = runs(tmp_path)[1]
    assert run.data.metrics["target/val_acc"] is not None  # the epoch metrics reached the store
