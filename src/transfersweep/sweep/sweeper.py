"""The transfersweep sweeper: the Hydra Optuna sweeper's search, plus what sweeps of paradigms need.

Reuses the stock sweeper (hydra-optuna-sweeper 1.4) for parsing the search
space, sampling and the custom search-space hook, and replaces its loop to:
- tell each job which Optuna trial it is (`trial.number`, `trial.id` overrides)
  and nest its MLflow run under one parent run per study (`tracking.parent_run_id`);
- keep going when a trial fails (Optuna FAIL, MLflow FAILED with the reason),
  within a sweep-level failure budget, and end with a clear message, not a
  traceback, when nothing succeeds;
- print one progress line per trial and write the summary to the parent run;
- let many workers (processes or machines) share one study: `n_trials` is the
  study's total, each worker takes trials under a study lock until the study
  holds that many, and trials whose worker died (no heartbeat) or was
  interrupted are failed with the reason and run again, never counted twice.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import os
import socket
import sys
import threading
import time
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf

from transfersweep import tracking
from transfersweep.errors import TransferSweepError, first_line
from transfersweep.sweep import summary
from transfersweep.sweep.lock import check_reachable, study_lock
from transfersweep.sweep.trial import storage_url

log = logging.getLogger("transfersweep.sweep")


def _resolve(dotpath: str):
    module, _, name = dotpath.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _tell(study: Any, trial: Any, **kwargs: Any) -> None:
    try:
        study.tell(trial, **kwargs)
    except (
        RuntimeError
    ) as e:  # GridSampler calls study.stop() outside optimize() once the grid is done
        if "Study.stop" not in str(e):
            raise


def _outcome(ret: JobReturn) -> tuple[float | None, str | None]:
    """(objective, None) for a usable result, (None, reason) otherwise ("PRUNED ..." when pruned)."""
    if ret.status != JobStatus.COMPLETED:
        e = ret._return_value
        if isinstance(e, optuna.TrialPruned):
            return None, f"PRUNED {e}"
        return None, f"{type(e).__name__}: {first_line(e)}"[:500]
    try:
        value = float(ret.return_value)
    except (TypeError, ValueError):
        return None, f"objective is not a number: {ret.return_value!r}"
    if not math.isfinite(value):
        return None, f"objective is not finite: {value}"
    return value, None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_name() -> str:
    """`host:pid` of this sweep process, stored on each trial it runs. TRANSFERSWEEP_HOST names the
    host where machines share a hostname (e.g. containers started from one image)."""
    return f"{os.environ.get('TRANSFERSWEEP_HOST') or socket.gethostname()}:{os.getpid()}"


_REDO = ("stale", "interrupted")  # failures that say nothing about the trial's parameters
RUNNING, WAITING, FAIL = (
    optuna.trial.TrialState.RUNNING,
    optuna.trial.TrialState.WAITING,
    optuna.trial.TrialState.FAIL,
)


def _redo(t: Any) -> bool:
    return t.state == FAIL and str(t.user_attrs.get("error", "")).startswith(_REDO)


def held(study: Any) -> int:
    """Trials that count towards n_trials: running or ended, except the interrupted / stale ones,
    whose parameters wait in the queue (WAITING) for the next `ask`."""
    return sum(t.state != WAITING and not _redo(t) for t in study.get_trials(deepcopy=False))


def _dead(t: Any, me: str, stale_after_s: float) -> bool:
    owner = t.user_attrs.get("sweeper") or ""
    host, _, pid = owner.rpartition(":")
    if owner and host == me.rpartition(":")[0]:  # this host: ask the OS whether it still runs
        return not _alive(int(pid))
    beat = t.user_attrs.get("heartbeat")  # another host: its sweep process beats while it runs
    last = float(beat) if beat is not None else t.datetime_start.timestamp()
    return time.time() - last > stale_after_s


def mark_stale(study: Any, parent: Any, stale_after_s: float = 300.0) -> list[int]:
    """Trials left RUNNING by a dead sweep process (kill -9, power loss, lost node) become FAIL in
    Optuna and KILLED in MLflow, reason "stale". A process on this host is dead when the OS says so;
    one on another host when its heartbeat is older than stale_after_s. Then every interrupted or
    stale trial not yet queued again is enqueued with the same parameters, so the study still
    reaches n_trials evaluated trials. Call under the study lock."""
    me = worker_name()
    stale = []
    for t in study.get_trials(deepcopy=False, states=(RUNNING,)):
        if not _dead(t, me, stale_after_s):
            continue
        owner = t.user_attrs.get("sweeper") or "unknown"
        study._storage.set_trial_user_attr(
            t._trial_id, "error", f"stale: its sweep process ({owner}) died"
        )
        study._storage.set_trial_state_values(t._trial_id, FAIL)
        stale.append(t.number)
    if stale and not isinstance(parent, tracking.NoRun):
        running = parent.client.search_runs(
            [parent.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}' and attributes.status = 'RUNNING'",
        )
        for r in running:
            if r.data.tags.get("trial") in {str(n) for n in stale}:
                parent.client.set_tag(r.info.run_id, "error", "stale: its sweep process died")
                parent.client.set_terminated(r.info.run_id, status="KILLED")
    if stale:
        log.warning(
            "marked %d stale trial(s) of a dead sweep process as failed: %s", len(stale), stale
        )
    trials = study.get_trials(deepcopy=False)
    queued = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if _redo(t) and t.number not in queued and t.params:
            _requeue(study, t)
            log.info("trial #%d (%s) queued to run again", t.number, t.user_attrs["error"][:60])
    return stale


def _requeue(study: Any, t: Any) -> None:
    """`study.enqueue_trial(t.params)`, keeping a grid cell's id: GridSampler needs it on every
    trial it sees (an enqueued trial without one breaks its after_trial)."""
    keep = {k: t.system_attrs[k] for k in ("grid_id", "search_space") if k in t.system_attrs}
    study.add_trial(
        optuna.trial.create_trial(
            state=WAITING,
            system_attrs={"fixed_params": t.params, **keep},
            user_attrs={"retry_of": t.number},
        )
    )


class Heartbeat:
    """Stamps `heartbeat` (unix time) on this worker's running trials every `interval` seconds, so
    a worker on another machine can tell a live trial from one whose worker died."""

    def __init__(self, study: Any, interval: float):
        self.study, self.interval = study, interval
        self.trial_ids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def track(self, trial_ids: list[int]) -> None:
        self.trial_ids = list(trial_ids)
        self.beat()

    def beat(self) -> None:
        now = time.time()
        for tid in self.trial_ids:
            try:
                self.study._storage.set_trial_user_attr(tid, "heartbeat", now)
            except Exception:  # finished meanwhile (or the store blinked): the next beat retries
                pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        self.trial_ids = []


class TransferSweeperImpl(OptunaSweeperImpl):
    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: Any,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        custom_search_space: str | None,
        params: Any,
        min_trials_for_failure_rate: int = 4,
        summary: bool = True,
        heartbeat_s: float = 30.0,
        stale_after_s: float = 300.0,
    ) -> None:
        # The hook is resolved here, not through hydra.utils.instantiate (Hydra 1.4 would warn).
        super().__init__(
            sampler,
            direction,
            storage,
            study_name,
            n_trials,
            n_jobs,
            max_failure_rate,
            None,
            params,
        )
        self.custom_search_space_extender = (
            _resolve(custom_search_space) if custom_search_space else None
        )
        self.min_trials_for_failure_rate = min_trials_for_failure_rate
        self.write_summary = summary
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s

    def sweep(self, arguments: list[str]) -> None:
        cfg = self.config
        self._process_searchspace_config()
        params_conf = self._parse_sweeper_params_config() + list(arguments)
        dists, fixed, fixed_overrides = create_params_from_overrides(params_conf)
        for name in fixed:  # a value fixed on the command line replaces its search dimension
            dists.pop(name, None)
        self.fixed = fixed
        if (
            isinstance(self.sampler, functools.partial)
            and self.sampler.func == optuna.samplers.GridSampler
        ):
            grid = {name: self._to_grid_sampler_choices(d) for name, d in dists.items()}
            self.sampler = self.sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))

        storage = storage_url(self.storage)
        study_name = self.study_name or "transfersweep"
        space = {k: str(v) for k, v in (self.params or {}).items()} | {
            a.split("=", 1)[0]: a.split("=", 1)[1] for a in arguments if "=" in a
        }
        task_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        try:
            check_reachable(storage)
            tracking.check_server(cfg)
        except TransferSweepError as e:
            log.error("error: %s", e)
            sys.exit(2)
        with study_lock(storage, study_name):  # the first of many workers creates the stores
            study = optuna.create_study(
                study_name=study_name,
                storage=storage,
                sampler=self.sampler,
                direction=self._get_directions()[0],
                load_if_exists=True,
            )
            parent = (
                tracking.open_parent(task_cfg, study_name, storage, space)
                if cfg.tracking.enabled
                else tracking.NoRun()
            )
            parent.log_text(OmegaConf.to_yaml(cfg), "sweep_config.yaml")  # hydra.sweeper included
            mark_stale(study, parent, self.stale_after_s)
            before = held(study)
            # Workers (and resumes) after the first draw other random numbers: with one seed, every
            # worker's TPE start-up trials would repeat the same parameters.
            starts = study._storage.get_study_system_attrs(study._study_id).get("workers", 0)
            study._storage.set_study_system_attr(study._study_id, "workers", starts + 1)
            if starts:
                self.sampler.reseed_rng()
        me = worker_name()  # lets a later sweep tell our dead trials
        log.info(
            "sweep %r: %d trial(s) to run (n_trials=%d is the study's total%s) | storage %s | "
            "MLflow parent run %s",
            study_name, max(0, self.n_trials - before), self.n_trials,
            f", {before} already in the study" if before else "",
            tracking.redact(str(storage)), parent.run_id,
        )  # fmt: skip

        done = failed = 0
        first_error: str | None = None
        status = "FINISHED"
        trials: list[Any] = []
        heartbeat = Heartbeat(study, self.heartbeat_s)
        try:
            while True:
                with study_lock(storage, study_name):  # count and take under one lock: exact total
                    mark_stale(study, parent, self.stale_after_s)  # a worker died meanwhile?
                    batch = min(self.n_jobs, self.n_trials - held(study))
                    trials = [study.ask() for _ in range(max(0, batch))]
                    for t in trials:
                        study._storage.set_trial_user_attr(t._trial_id, "sweeper", me)
                if not trials:
                    break
                heartbeat.track([t._trial_id for t in trials])
                overrides = self._configure_trials(trials, dists, fixed, fixed_overrides)
                overrides = [
                    tuple(o) + (f"trial.number={t.number}", f"trial.id={t._trial_id}")
                    + ((f"tracking.parent_run_id={parent.run_id}",) if cfg.tracking.enabled else ())
                    for o, t in zip(overrides, trials, strict=True)
                ]  # fmt: skip
                t0 = time.perf_counter()
                returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
                self.job_idx += len(returns)
                for trial, ret in zip(trials, returns, strict=True):
                    value, error = _outcome(ret)
                    done += 1
                    if error is None:
                        _tell(study, trial, values=value)
                    elif error.startswith("PRUNED"):
                        _tell(study, trial, state=optuna.trial.TrialState.PRUNED)
                    else:
                        failed += 1
                        first_error = first_error or error
                        study._storage.set_trial_user_attr(trial._trial_id, "error", error)
                        _tell(study, trial, state=FAIL)
                    self._progress(study, trial, value, error, time.perf_counter() - t0)
                trials = []
                if (
                    done >= self.min_trials_for_failure_rate
                    and failed / done > self.max_failure_rate
                    and held(study) < self.n_trials
                ):
                    status = "FAILED"
                    log.error(
                        "sweep stopped: %d of %d trials failed (more than hydra.sweeper.max_failure_rate=%s). "
                        "First error: %s",
                        failed, done, self.max_failure_rate, first_error,
                    )  # fmt: skip
                    break
        except (
            BaseException
        ) as e:  # Ctrl-C / SIGTERM: the trials in flight end FAIL with the reason
            status = "KILLED"
            reason = (
                f"interrupted ({type(e).__name__}: {e})"
                if str(e)
                else f"interrupted ({type(e).__name__})"
            )
            for t in trials:
                if study._storage.get_trial(t._trial_id).state == RUNNING:
                    study._storage.set_trial_user_attr(t._trial_id, "error", reason)
                    _tell(study, t, state=FAIL)
            parent.set_tags({"interrupted": reason})
            log.error(
                "sweep %r %s; finished trials are kept, run it again to resume", study_name, reason
            )
            raise
        finally:
            heartbeat.stop()
            self._finish(study, parent, status, storage, me)

        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
            log.error(
                "sweep %r: no trial succeeded (%d failed, %d pruned). First error: %s. Run one trial "
                "on its own (same overrides, without -m) to see the full error.",
                study_name, failed, pruned, first_error,
            )  # fmt: skip
            sys.exit(1)
        best = study.best_trial
        os.makedirs(cfg.hydra.sweep.dir, exist_ok=True)  # absent when this worker ran no trial
        OmegaConf.save(
            OmegaConf.create(
                {"name": "optuna", "best_params": best.params, "best_value": best.value}
            ),
            f"{cfg.hydra.sweep.dir}/optimization_results.yaml",
        )
        if status == "FAILED":
            sys.exit(1)

    def _progress(
        self,
        study: Any,
        trial: Any,
        value: float | None,
        error: str | None,
        seconds: float,
    ) -> None:
        attrs = study._storage.get_trial(trial._trial_id).user_attrs
        chosen = self.fixed | trial.params
        paradigm = attrs.get("paradigm") or "+".join(
            str(chosen.get(k, "?")) for k in ("regime", "freeze")
        )
        others = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in trial.params.items()
            if k not in ("regime", "freeze")
        )
        try:
            b = study.best_trial
            best = f"best {b.value:.4f} (#{b.number} {b.user_attrs.get('paradigm', '')})"
        except ValueError:
            best = "no best yet"
        spread = f" ± {attrs['val_std']:.4f}" if attrs.get("val_std") is not None else ""
        if error is None:
            result = f"val_acc {value:.4f}{spread}"
        else:
            result = error if error.startswith("PRUNED") else f"FAILED: {error}"
        ended = sum(
            not _redo(t) and t.state.is_finished() for t in study.get_trials(deepcopy=False)
        )  # study-wide, so the count is right with many workers and after a resume
        log.info(
            "trial %d/%d [#%d] %s %s -> %s | %s | %.0fs",
            ended,
            self.n_trials,
            trial.number,
            paradigm,
            others,
            result,
            best,
            seconds,
        )

    def _finish(self, study: Any, parent: Any, status: str, storage: str | None, me: str) -> None:
        """The last worker to stop writes the summary and ends the parent run; a worker that
        stops while others still run trials leaves the parent RUNNING for them."""
        if isinstance(parent, tracking.NoRun):
            return
        with study_lock(storage, study_name := study.study_name):
            others = [
                t
                for t in study.get_trials(deepcopy=False, states=(RUNNING,))
                if t.user_attrs.get("sweeper") != me and not _dead(t, me, self.stale_after_s)
            ]
        if others:
            parent.flush()
            log.info(
                "%d trial(s) of study %r still run in other workers; the last one to finish "
                "writes the summary", len(others), study_name,
            )  # fmt: skip
            return
        try:
            if self.write_summary:
                head = summary.log_to_parent(study, parent)
                log.info("paradigm table (study %r):\n%s", study_name, head["table"])
                log.info("MLflow: `make ui`, then %s", parent.ui_url())
        finally:
            parent.flush()
            parent.client.set_terminated(parent.run_id, status=status)
