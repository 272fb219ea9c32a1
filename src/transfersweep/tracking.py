"""MLflow tracking: one run per invocation, always ended FINISHED, FAILED or KILLED.

Uses `MlflowClient` with explicit run ids rather than mlflow's global "active
run", so a failed trial cannot leak an active run into the next in-process
trial. Metrics go out in one `log_batch` per epoch (off the hot path).

Default store: `sqlite:///<abs paths.outputs>/mlflow.db`, artifacts under
`<paths.outputs>/mlartifacts`; absolute, so every Hydra job dir shares them.

(Over 400 lines: a run's MLflow calls are all here, behind one client and one error policy;
elsewhere only the champion's registration and predict's model loading speak to MLflow.)
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

UI_PORT = 5000
_URL_PASSWORD = re.compile(r"(//[^:/@\s]+:)[^@/\s]+@")

MAX_TAG = 8000  # MLflow's limit on a tag value (MAX_TAG_VAL_LENGTH)


def redact(text: str) -> str:
    """Hide passwords in URLs (postgresql://user:secret@host -> user:***@host)."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def redact_hydra_record() -> None:
    """Hydra saved this job's config and command line under .hydra/ before the job started; a
    password typed into a storage or tracking URL is masked there too (prefer PGPASSWORD /
    ~/.pgpass)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    if hc.output_subdir is None:
        return
    for f in (Path(hc.runtime.output_dir) / hc.output_subdir).glob("*.yaml"):
        text = f.read_text()
        masked = redact(text)
        if masked != text:
            f.write_text(masked)


def outputs_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.outputs).expanduser().resolve()


def tracking_uri(cfg: DictConfig) -> str:
    if cfg.tracking.uri:
        return str(cfg.tracking.uri)
    out = outputs_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{out / 'mlflow.db'}"


def artifact_location(cfg: DictConfig) -> str | None:
    if cfg.tracking.artifact_location:
        return str(cfg.tracking.artifact_location)
    if cfg.tracking.uri and not str(cfg.tracking.uri).startswith("sqlite"):
        return None  # a tracking server decides where artifacts go
    return (outputs_dir(cfg) / "mlartifacts").as_uri()


def flatten(cfg: DictConfig) -> dict[str, str]:
    """Resolved config as `a.b.c -> str(value)`, the form MLflow params take."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            if not node and prefix:
                out[prefix] = "{}"
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            value = node.value if isinstance(node, Enum) else node
            out[prefix] = redact(str(value))[:6000]

    walk("", OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    return out


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C / SIGTERM wait until a store write is done. A KeyboardInterrupt inside one
    leaves SQLite's write transaction open, and ending the run KILLED then fails with
    'database is locked', leaving it RUNNING. Main thread only (where signals arrive)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = {n: signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM)}
    for n in old:
        signal.signal(n, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for n, handler in old.items():
            signal.signal(n, handler)
    for n in caught[:1]:  # now, as it would have
        if callable(old[n]):
            old[n](n, None)
        elif old[n] == signal.SIG_DFL:
            signal.raise_signal(n)


class Run:
    """A live MLflow run with batched logging; `None`-safe when tracking is off."""

    FLUSH_SECONDS = 5.0  # buffered metrics reach the store at least this often

    def __init__(self, client: Any, run_id: str, experiment_id: str, uri: str):
        self.client, self.run_id, self.experiment_id, self.uri = client, run_id, experiment_id, uri
        self._buffer: list[Any] = []  # per-epoch metrics waiting for the next flush
        self._flushed = time.monotonic()
        self.known_params: dict[str, str] = {}  # a continued run's (MLflow's params are final)
        # called before the run ends: writers on other threads finish what they took (resume)
        self.settle_hooks: list[Callable[[], None]] = []

    def log_params(self, params: Mapping[str, Any]) -> None:
        """The params; a continued run keeps those it has (a re-queued trial's number and id
        differ: the tags `trial` and `resumed_from_trial` tell)."""
        from mlflow.entities import Param

        new = [Param(k, str(v)) for k, v in params.items() if k not in self.known_params]
        if new:
            with uninterrupted():
                self.client.log_batch(self.run_id, params=new)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Buffered: written in one batch every FLUSH_SECONDS and when the run ends (each store
        write costs ~10-15 ms on SQLite, as much as an epoch of a small model)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()]
        if time.monotonic() - self._flushed >= self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the buffered metrics (at the latest when the run ends)."""
        with uninterrupted():
            self.write(self.take())

    def take(self) -> list[Any]:
        """The buffered metrics, now out of the buffer: for `write` on another thread (the
        resume writer stores them before the state that counts their epochs)."""
        buffered, self._buffer = self._buffer, []
        self._flushed = time.monotonic()
        return buffered

    def write(self, metrics: list[Any]) -> None:
        try:
            for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 a batch
                self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])
        except Exception:
            self._buffer[:0] = metrics  # not lost: the next flush tries them again
            raise

    def settle(self) -> None:
        """Everything logged is in the store: other threads' writes, then the buffer."""
        for hook in self.settle_hooks:
            hook()
        self.flush()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        with uninterrupted():
            self.client.log_batch(
                self.run_id, tags=[RunTag(k, redact(str(v))[:MAX_TAG]) for k, v in tags.items()]
            )

    def log_dir(self, local_dir: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_json(self, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, redact(text), artifact_file)

    def ui_url(self, host: str = "127.0.0.1", port: int = UI_PORT) -> str:
        base = (
            self.uri.rstrip("/") if self.uri.startswith("http") else f"http://{host}:{port}"
        )  # a tracking server serves its own UI
        return f"{redact(base)}/#/experiments/{self.experiment_id}/runs/{self.run_id}"


class NoRun(Run):
    """tracking.enabled=false: same interface, logs nothing."""

    def __init__(self) -> None:
        super().__init__(None, "-", "-", "-")

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def flush(self) -> None: ...
    def take(self) -> list[Any]:
        return []

    def write(self, metrics: list[Any]) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_dir(self, local_dir: Path, artifact_path: str) -> None: ...
    def log_json(self, obj: Any, artifact_file: str) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...


def experiment_id(client: Any, name: str, location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def check_server(cfg: DictConfig) -> None:
    """An http(s) tracking.uri must answer within seconds (MLflow's client would retry for
    minutes before it gave up). Called before any set-up work or run is opened."""
    import socket
    from urllib.parse import urlsplit

    from transfersweep.errors import ConfigError

    uri = str(cfg.tracking.uri or "")
    if not cfg.tracking.enabled or not uri.startswith(("http://", "https://")):
        return
    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=5).close()
    except OSError as e:
        raise ConfigError(
            f"tracking.uri={redact(uri)!r} is unreachable ({e}): start the server (`make server`, "
            "or `python -m transfersweep.server`), fix the URL, or leave tracking.uri unset for "
            "the local store"
        ) from None
    status = _login_status(uri)
    if status in (401, 403):
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        raise ConfigError(
            f"tracking.uri={redact(uri)!r} "
            + (
                f"refused the login of user {user!r} ({status}): check MLFLOW_TRACKING_PASSWORD, "
                "and that the server's admin gave this user access"
                if user
                else f"asks for a login ({status}): export MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (MLflow's own variables; never put them in a config value)"
            )
        )


def _login_status(uri: str) -> int | None:
    """HTTP status of an authenticated read (MLflow's tracking credentials from the
    environment), or None when the server cannot say (old servers, network trouble: the run
    itself will tell)."""
    import base64
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
    )
    user, password = (
        os.environ.get("MLFLOW_TRACKING_USERNAME"),
        os.environ.get("MLFLOW_TRACKING_PASSWORD"),
    )
    if user and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def _open_experiment(cfg: DictConfig) -> tuple[Any, str, str]:
    """Client, experiment id and URI of the configured store (experiment created if needed)."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg)
    client = MlflowClient(tracking_uri=uri)
    return client, experiment_id(client, cfg.tracking.experiment, artifact_location(cfg)), uri


@contextmanager
def start(
    cfg: DictConfig, run_name: str, tags: Mapping[str, Any], resume_run_id: str | None = None
) -> Iterator[Run]:
    """Open a run; on exit it is FINISHED, or FAILED (error tag) / KILLED on interrupt, then
    re-raised. `resume_run_id`: an interrupted run that this one continues (transfersweep.resume)."""
    if not cfg.tracking.enabled:
        yield NoRun()
        return
    client, exp_id, uri = _open_experiment(cfg)
    all_tags = {"mlflow.runName": run_name, **{k: str(v) for k, v in tags.items()}}
    if cfg.tracking.parent_run_id:
        all_tags["mlflow.parentRunId"] = cfg.tracking.parent_run_id
    run = _reopen(client, resume_run_id, exp_id, uri, all_tags) if resume_run_id else None
    if run is None:
        mlrun = client.create_run(exp_id, run_name=run_name, tags=all_tags)
        run = Run(client, mlrun.info.run_id, exp_id, uri)
    try:
        yield run
    except BaseException as e:
        if type(e).__name__ == "TrialPruned":  # stopped early by the sweep's pruner: not a failure
            status, tags = "FINISHED", {"pruned": "true", "pruned_reason": str(e)}
        else:
            status = "KILLED" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "FAILED"
            tags = {"error": f"{type(e).__name__}: {e}", "error_type": type(e).__name__}
        try:
            run.settle()
            run.set_tags(tags)
        finally:
            client.set_terminated(run.run_id, status=status)
        raise
    run.settle()
    client.set_terminated(run.run_id, status="FINISHED")


def _live(client: Any, run_id: str, exp_id: str) -> Any:
    """Run `run_id` if the store still has it, active, in experiment `exp_id`; else None."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    active = run.info.experiment_id == exp_id and run.info.lifecycle_stage == "active"
    return run if active else None


def _reopen(client: Any, run_id: str, exp_id: str, uri: str, tags: Mapping[str, str]):
    """The interrupted run `run_id`, RUNNING again with this run's tags, its end's error tags
    gone; None (a new run) when the store no longer has it."""
    old = _live(client, run_id, exp_id)
    if old is None:
        log.warning(
            "MLflow run %s (the interrupted run) is not in this experiment any more: a new run "
            "holds the rest, without the epochs before the resume",
            run_id,
        )
        return None
    for gone in ("error", "error_type", "pruned", "pruned_reason"):
        if gone in old.data.tags:
            client.delete_tag(run_id, gone)
    client.update_run(run_id, status="RUNNING")
    run = Run(client, run_id, exp_id, uri)
    run.known_params = dict(old.data.params)
    run.set_tags(tags)
    return run


def save_checkpoint(
    run: Run,
    state: Mapping[str, Any],
    cfg: DictConfig,
    info: Mapping[str, Any],
    artifact_path: str = "checkpoint",
) -> None:
    """Log `model.safetensors` + `config.yaml` (the resolved config and what the head predicts)."""
    if isinstance(run, NoRun):
        return
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in state.items()},
            str(tmp_path / "model.safetensors"),
        )
        doc = OmegaConf.create(
            {
                "checkpoint": dict(info),
                "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
            }
        )
        (tmp_path / "config.yaml").write_text(redact(OmegaConf.to_yaml(doc)))
        run.log_dir(tmp_path, artifact_path)


def kill_children(parent: Run, trial_numbers: list[int], reason: str) -> None:
    """End the RUNNING child runs of these sweep trials KILLED with the reason (their worker
    died, so nothing else will)."""
    if isinstance(parent, NoRun) or not trial_numbers:
        return
    wanted = {str(n) for n in trial_numbers}
    running = parent.client.search_runs(
        [parent.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}' and attributes.status = 'RUNNING'",
    )
    for r in running:
        if r.data.tags.get("trial") in wanted:
            parent.client.set_tag(r.info.run_id, "error", reason)
            parent.client.set_terminated(r.info.run_id, status="KILLED")


def open_parent(
    cfg: DictConfig,
    study: str,
    storage: str | None,
    search_space: Mapping[str, Any],
    run_id: str | None = None,
    resumed: bool = False,
) -> Run:
    """The sweep's parent run: created once per study (before any trial starts, so parallel
    trials never race on a fresh store), reopened when the same study is resumed: `run_id`,
    the parent the study recorded, or for a study recorded before it did (`resumed`, no
    `run_id`) the parent run tagged with its name and storage. A new study, even under an old
    name, gets a new parent: an old parent's confirmation runs belong to other trials."""
    import json

    client, exp_id, uri = _open_experiment(cfg)
    where = redact(str(storage))
    found = []
    if run_id is not None:  # gone from the store (or deleted): the study gets a new parent
        found = [run] if (run := _live(client, run_id, exp_id)) is not None else []
    elif resumed:
        found = client.search_runs(
            [exp_id],
            filter_string=f"tags.`transfersweep.role` = 'sweep' and tags.study = '{study}'",
            max_results=50,
        )
        found = [r for r in found if r.data.tags.get("optuna_storage") == where]
    if found:
        run = Run(client, found[0].info.run_id, exp_id, uri)
        client.update_run(run.run_id, status="RUNNING")
        run.set_tags({"resumed": "true"})
        return run
    tags = {
        "mlflow.runName": f"sweep:{study}",
        "transfersweep.role": "sweep",
        "study": study,
        "optuna_storage": where,
        "backbone": cfg.backbone.name,
        "data": cfg.data.name,
    }
    mlrun = client.create_run(exp_id, run_name=f"sweep:{study}", tags=tags)
    run = Run(client, mlrun.info.run_id, exp_id, uri)
    params = {k: v for k, v in flatten(cfg).items() if not k.startswith("trial.")}
    run.log_params(params | {"search_space": json.dumps(dict(search_space))[:6000]})
    return run
