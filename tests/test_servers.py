"""Real servers: a PostgreSQL-backed study shared by 4 worker processes, an MLflow tracking server
(`python -m transfersweep.server`, what `make server` runs) with SQLite and PostgreSQL backends,
and no password in anything transfersweep writes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from conftest import FAST, sweep_parent
from servers import PASSWORD, free_port, get_json, mlflow_server, output, poll_http, postgres

pytestmark = pytest.mark.slow  # real PostgreSQL and MLflow servers, many worker processes

WORKER = [
    "-m",
    "sweep=paradigm",
    *FAST,
    "trainer.target_epochs=1",
    "pruner.name=none",
    "hydra.sweeper.study_name=shared",
    "hydra.sweeper.confirm.top_k=0",  # exact trial counts; confirmation: test_sweep.py
]


@pytest.fixture(scope="module")
def pg():
    with postgres() as server:
        yield server


def _listening_on(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on `port` (from /proc: no extra tool)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:
                found.add(addr)
    return found


def _workers(n: int, args: list[str], cwd: Path, env: dict | None = None):
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "transfersweep.train", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        for _ in range(n)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    return [p.returncode for p in procs], outs


def _all_text_under(root: Path) -> str:
    return "\n".join(
        f.read_text(errors="replace")
        for f in root.rglob("*")
        if f.is_file() and f.stat().st_size < 10**7
    )


def test_make_server_binds_loopback_and_takes_runs_over_http(tmp_path):
    from mlflow.tracking import MlflowClient

    port = free_port()
    with mlflow_server(
        f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}", tmp_path / "art", port
    ) as (
        url,
        _,
    ):
        assert _listening_on(port) and _listening_on(port) <= {
            "0100007F",  # 127.0.0.1 (little-endian hex)
            "00000000000000000000000001000000",  # ::1
        }
        res = subprocess.run(
            [sys.executable, "-m", "transfersweep.train", *FAST, "regime=target_only",
             f"tracking.uri={url}", f"paths.outputs={tmp_path / 'out'}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        client = MlflowClient(tracking_uri=url)
        (run,) = client.search_runs([client.get_experiment_by_name("transfersweep").experiment_id])
        assert run.info.status == "FINISHED" and 0 < run.data.metrics["target/val_acc"] <= 1
        files = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
        assert "checkpoint/model.safetensors" in files
        # artifacts went through the server into its artifact root, not to a client-side path
        assert list((tmp_path / "art").rglob("model.safetensors"))
        assert not (tmp_path / "out" / "mlartifacts").exists()
        assert f"{url}/#/experiments/" in res.stdout + res.stderr


def test_four_workers_share_one_postgres_study_and_mlflow_server(pg, tmp_path):
    """4 processes start the same sweep at once: exactly n_trials trials, numbered 0..n-1, each
    with one FINISHED MLflow run under one parent; no lock errors; no password written anywhere."""
    from mlflow.tracking import MlflowClient

    storage = pg.create_db("optuna4")
    backend = pg.create_db("mlflow4")
    n = 10
    with mlflow_server(backend, tmp_path / "art") as (url, server):
        codes, outs = _workers(
            4,
            [*WORKER, f"hydra.sweeper.n_trials={n}", f"hydra.sweeper.storage={storage}",
             f"tracking.uri={url}", f"paths.outputs={tmp_path / 'out'}"],
            tmp_path,
        )  # fmt: skip
        log = "\n".join(outs)
        assert codes == [0, 0, 0, 0], log[-6000:]
        study = optuna.load_study(study_name="shared", storage=storage)
        trials = study.trials
        assert sorted(t.number for t in trials) == list(range(n))
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        assert len({t.user_attrs["sweeper"] for t in trials}) >= 2  # really shared
        for word in ("database is locked", "deadlock", "Traceback", "duplicate key"):
            assert word not in log

        client = MlflowClient(tracking_uri=url)
        exp = client.get_experiment_by_name("transfersweep")
        found = client.search_runs([exp.experiment_id], max_results=1000)
        parent = sweep_parent(found)
        children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(int(c.data.tags["trial"]) for c in children) == list(range(n))
        assert all(r.info.status == "FINISHED" for r in found)  # the last worker ended the parent
        assert {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}

        # security: the storage URL carried a password; it is redacted wherever we write it
        assert PASSWORD not in log
        for r in found:
            assert PASSWORD not in repr(r.data.params) + repr(r.data.tags)
        assert "***@" in parent.data.tags["optuna_storage"]
        dest = tmp_path / "downloaded"
        client.download_artifacts(parent.info.run_id, "", str(dest))
        client.download_artifacts(children[0].info.run_id, "", str(dest / "child"))
        assert PASSWORD not in _all_text_under(dest)
        assert PASSWORD not in _all_text_under(tmp_path / "out")  # Hydra's .hydra/ records too
        server.terminate()
        assert PASSWORD not in server.communicate(timeout=30)[0]


def test_sqlite_study_with_parallel_workers(tmp_path):
    """The SQLite limit stated in the README: 3 workers on one machine, stores created by the
    first worker under the study lock, every trial exactly once."""
    n = 6
    codes, outs = _workers(
        3,
        [*WORKER, f"hydra.sweeper.n_trials={n}", f"paths.outputs={tmp_path}"],
        tmp_path,
    )
    log = "\n".join(outs)
    assert codes == [0, 0, 0], log[-6000:]
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert sorted(t.number for t in study.trials) == list(range(n))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert "database is locked" not in log


def _node(cwd: Path, host: str, args: list[str]) -> subprocess.Popen:
    """A sweep worker that calls its machine `host` (TRANSFERSWEEP_HOST), logging to <host>.log."""
    with open(cwd / f"{host}.log", "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "transfersweep.train", *args],
            cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "TRANSFERSWEEP_HOST": host},
        )  # fmt: skip


def _log(cwd: Path, host: str) -> str:
    return (cwd / f"{host}.log").read_text()


def _wait_for(cwd: Path, host: str, text: str, proc: subprocess.Popen) -> None:
    deadline = time.time() + 180
    while text not in _log(cwd, host):
        assert time.time() < deadline and proc.poll() is None, _log(cwd, host)[-3000:]
        time.sleep(0.2)


def _run_node(cwd: Path, host: str, args: list[str]) -> tuple[int, str]:
    proc = _node(cwd, host, args)
    return proc.wait(timeout=300), _log(cwd, host)


def test_another_hosts_trial_is_stale_only_after_its_heartbeat_stops(tmp_path):
    """A trial owned by a worker on another host (TRANSFERSWEEP_HOST) is judged by its heartbeat:
    left alone while fresh, failed as stale and re-run once it is older than stale_after_s."""
    args = [*WORKER, "regime=target_only", "hydra.sweeper.n_trials=2", f"paths.outputs={tmp_path}"]
    a = _node(
        tmp_path, "node-a", [*args, "trainer.target_epochs=100000", "hydra.sweeper.heartbeat_s=1"]
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    _wait_for(tmp_path, "node-a", "[target] epoch   5/100000", a)  # beaten a few times
    code, log = _run_node(tmp_path, "node-b", [*args, "hydra.sweeper.stale_after_s=60"])
    assert code == 0, log[-3000:]
    assert "stale" not in log  # node-a's beating trial is left alone and counted
    states = [t.state.name for t in optuna.load_study(study_name="shared", storage=storage).trials]
    assert sorted(states) == ["COMPLETE", "RUNNING"]
    a.kill()  # node-a dies without a word; its heartbeat stops
    a.wait(timeout=30)
    time.sleep(3)
    code, log = _run_node(tmp_path, "node-b", [*args, "hydra.sweeper.stale_after_s=2"])
    assert code == 0, log[-3000:]
    assert "marked 1 stale trial(s)" in log
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE", "FAIL"]
    dead = next(t for t in trials if t.state.name == "FAIL")
    assert "node-a" in dead.user_attrs["error"]
    assert (
        next(t for t in trials if t.user_attrs.get("retry_of") == dead.number).params == dead.params
    )


def test_unreachable_storage_or_tracking_server_fails_fast_with_the_fix(tmp_path):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    for args, expect in [
        ([*WORKER, f"hydra.sweeper.storage=postgresql://u:{PASSWORD}@{dead}/db"],
         "hydra.sweeper.storage='postgresql://u:***@"),
        ([*WORKER, f"tracking.uri=http://{dead}"], "is unreachable"),
        ([*FAST, f"tracking.uri=http://{dead}"], "start the server (`make server`"),
    ]:  # fmt: skip
        t0 = time.time()
        res = subprocess.run(
            [sys.executable, "-m", "transfersweep.train", *args, f"paths.outputs={tmp_path}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        log = res.stdout + res.stderr
        assert res.returncode == 2 and expect in log, log[-3000:]
        assert "Traceback" not in log and PASSWORD not in log
        assert time.time() - t0 < 60
    assert not (tmp_path / "optuna.db").exists()  # nothing was created on the way out


def test_a_running_worker_takes_over_the_trials_of_a_worker_that_dies(tmp_path):
    """node-b is mid-sweep when node-a (another host) dies: at its next trial node-b finds
    node-a's trial stale (no heartbeat for stale_after_s), fails it and runs it again itself."""
    args = [*WORKER, "regime=target_only", "hydra.sweeper.n_trials=4", f"paths.outputs={tmp_path}",
            "hydra.sweeper.heartbeat_s=1", "hydra.sweeper.stale_after_s=3"]  # fmt: skip

    a = _node(tmp_path, "node-a", [*args, "trainer.target_epochs=100000"])
    _wait_for(tmp_path, "node-a", "epoch   2/100000", a)
    # node-b's trials take about 10 s each (300 epochs; 60 took 2 s on a quiet machine, and
    # node-b then claimed its last trial before node-a's heartbeat was 3 s old): node-a turns
    # stale while node-b still has a trial to claim
    b = _node(tmp_path, "node-b", [*args, "trainer.target_epochs=300"])
    _wait_for(tmp_path, "node-b", "trial 1/4", b)
    a.kill()
    a.wait(timeout=30)
    assert b.wait(timeout=300) == 0, _log(tmp_path, "node-b")[-3000:]
    log = _log(tmp_path, "node-b")
    assert "marked 1 stale trial(s)" in log
    trials = optuna.load_study(
        study_name="shared", storage=f"sqlite:///{tmp_path / 'optuna.db'}"
    ).trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 4 + ["FAIL"]
    dead = next(t for t in trials if t.state.name == "FAIL")
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == dead.number)
    assert retry.state.name == "COMPLETE" and retry.user_attrs["sweeper"].startswith("node-b:")


def test_exposed_server_needs_a_password_and_an_authenticated_sweep_works(tmp_path):
    """make server on another interface refuses to start without an admin password; with
    MLflow's basic auth, a REST call without a login gets 401, a run without one exits 2 with
    the fix, and a sweep with MLFLOW_TRACKING_USERNAME / _PASSWORD works end to end, the
    password in no param, tag, artifact, Hydra record or log."""
    import base64
    import urllib.error
    import urllib.request

    from mlflow.tracking import MlflowClient

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    backend = f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}"
    art = tmp_path / "server" / "artifacts"
    refused = subprocess.run(
        [sys.executable, "-m", "transfersweep.server", "--backend", backend,
         "--artifacts", str(art), "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "export MLFLOW_AUTH_ADMIN_PASSWORD" in refused.stderr and "AUTH=none" in refused.stderr
    admin = {"MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD}
    # basic auth forced on loopback: the test machine's network never sees the server
    with mlflow_server(backend, art, args=("--auth", "basic"), env=admin) as (url, proc):
        api = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(api, timeout=10)
        assert e.value.code == 401
        req = urllib.request.Request(api, headers={
            "Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()})  # fmt: skip
        assert urllib.request.urlopen(req, timeout=10).status == 200
        args = [*FAST, "regime=target_only", f"tracking.uri={url}"]
        anonymous = subprocess.run(
            [sys.executable, "-m", "transfersweep.train", *args, f"paths.outputs={tmp_path / 'a'}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert anonymous.returncode == 2
        assert "asks for a login (401): export MLFLOW_TRACKING_USERNAME" in anonymous.stdout
        login = {**env, "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": PASSWORD}
        out = tmp_path / "out"
        sweep = subprocess.run(
            [sys.executable, "-m", "transfersweep.train", "-m", "sweep=paradigm", *args,
             "hydra.sweeper.n_trials=2", "hydra.sweeper.confirm.top_k=0", f"paths.outputs={out}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600, env=login,
        )  # fmt: skip
        assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
        os.environ.update(
            {k: login[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        )
        try:
            client = MlflowClient(tracking_uri=url)
            exp = client.get_experiment_by_name("transfersweep")
            found = client.search_runs([exp.experiment_id])
        finally:
            for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                os.environ.pop(k, None)
        trials = [r for r in found if r.data.tags.get("transfersweep.role") != "sweep"]
        assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
        for r in found:  # no param, tag or metric name carries the password
            text = repr((r.data.params, r.data.tags, list(r.data.metrics)))
            assert PASSWORD not in text
        logs = sweep.stdout + sweep.stderr + anonymous.stdout + anonymous.stderr
        assert PASSWORD not in logs
        assert PASSWORD not in _all_text_under(art)  # every artifact, summaries included
        assert PASSWORD not in _all_text_under(out)  # Hydra records, logs, caches
    assert PASSWORD not in output(proc)


def test_make_ui_serves_the_local_store_and_asks_for_a_password_off_loopback(tmp_path):
    """make ui on loopback serves outputs/mlflow.db (runs and their artifacts); on another
    interface it refuses to start without an admin password, like make server."""
    import json
    import urllib.request

    from conftest import ROOT, compose
    from transfersweep import train

    out = tmp_path / "outputs"
    train.run(compose([*FAST, "regime=target_only"], out))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    make = ["make", "--no-print-directory", "ui", f"OUTPUTS={out}"]
    refused = subprocess.run([*make, "HOST=0.0.0.0", f"PORT={free_port()}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert refused.returncode == 2 and "export MLFLOW_AUTH_ADMIN_PASSWORD" in refused.stderr
    port = free_port()
    proc = subprocess.Popen([*make, f"PORT={port}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)  # fmt: skip
    api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        req = urllib.request.Request(
            f"{api}/runs/search", data=json.dumps({"experiment_ids": ["1"]}).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        (run,) = poll_http(lambda: get_json(req)["runs"], proc, what="make ui")
        run_id = run["info"]["run_id"]
        listed = json.loads(urllib.request.urlopen(
            f"{api}/artifacts/list?run_id={run_id}&path=checkpoint", timeout=5).read())  # fmt: skip
        assert "checkpoint/model.safetensors" in {f["path"] for f in listed["files"]}
    finally:
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
