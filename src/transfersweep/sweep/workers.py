"""This sweep process as one of many workers of one study: trial counting, claiming,
heartbeats, and recovering the trials of workers that died or were interrupted.

Every worker runs the same sweep command. Under the study lock (lock.py) a worker counts the
study's trials and asks for the next ones, so the study ends with exactly n_trials counted
trials; interrupted and stale trials do not count, and their parameters are queued again.
A worker's running trials carry its name (`host:pid`) and a heartbeat; a trial whose worker
is gone (same host: the OS says so; another host: no heartbeat for stale_after_s) is failed
as stale. This is the only module that uses Optuna's private storage API (`study._storage`,
`trial._trial_id`), which has no public way to set a trial's state or attributes from
outside its own process.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna

from transfersweep.cores import alive
from transfersweep.sweep.lock import study_lock
from transfersweep.sweep.outcome import REDO, Complete, Interrupted, Outcome, Pruned, Stale

log = logging.getLogger("transfersweep.sweep")

State = optuna.trial.TrialState


def worker_name() -> str:
    """`host:pid` of this sweep process, stored on each trial it runs. TRANSFERSWEEP_HOST names the
    host where machines share a hostname (e.g. containers started from one image)."""
    return f"{os.environ.get('TRANSFERSWEEP_HOST') or socket.gethostname()}:{os.getpid()}"


def _redo(t: Any) -> bool:
    return t.state == State.FAIL and t.user_attrs.get("outcome") in REDO


class Workers:
    def __init__(self, storage: str | None, study_name: str, stale_after_s: float = 300.0):
        self.storage, self.study_name, self.stale_after_s = storage, study_name, stale_after_s
        self.me = worker_name()
        self.study: Any = None

    def lock(self):
        return study_lock(self.storage, self.study_name)

    def open(self, sampler: Any, directions: list[str]) -> Any:
        """Create or load the study (call under the lock). Workers (and resumes) after the first
        reseed the sampler: with one seed, every worker's start-up trials would be the same."""
        self.study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            sampler=sampler,
            directions=directions,
            load_if_exists=True,
        )
        store, sid = self.study._storage, self.study._study_id
        starts = store.get_study_system_attrs(sid).get("workers", 0)
        store.set_study_system_attr(sid, "workers", starts + 1)
        if starts:
            sampler.reseed_rng()
        return self.study

    def counted(self) -> int:
        """Trials that count towards n_trials: running or ended, except the interrupted / stale
        ones, whose parameters wait in the queue (WAITING) for the next `ask`."""
        return sum(
            t.state != State.WAITING and not _redo(t) for t in self.study.get_trials(deepcopy=False)
        )

    def ended(self) -> int:
        """Trials that ended and count (study-wide: right with many workers and after resumes)."""
        return sum(
            not _redo(t) and t.state.is_finished() for t in self.study.get_trials(deepcopy=False)
        )

    def _dead(self, t: Any) -> bool:
        owner = t.user_attrs.get("sweeper") or ""
        host, _, pid = owner.rpartition(":")
        if owner and host == self.me.rpartition(":")[0]:  # this host: ask the OS
            return not alive(int(pid))
        beat = t.user_attrs.get("heartbeat")  # another host: its sweep process beats while it runs
        last = float(beat) if beat is not None else t.datetime_start.timestamp()
        return time.time() - last > self.stale_after_s

    def recover(self, on_stale: Callable[[list[int], str], None]) -> list[int]:
        """Fail the trials of dead workers as stale (`on_stale(numbers, reason)` ends their MLflow
        runs), then queue the parameters of every interrupted or stale trial not yet queued, so
        the study still reaches n_trials evaluated trials. Call under the lock."""
        stale = []
        for t in self.study.get_trials(deepcopy=False, states=(State.RUNNING,)):
            if self._dead(t):
                owner = t.user_attrs.get("sweeper") or "unknown"
                self._end(t._trial_id, Stale(f"stale: its sweep process ({owner}) died"))
                stale.append(t.number)
        if stale:
            on_stale(stale, "stale: its sweep process died")
            log.warning(
                "marked %d stale trial(s) of a dead sweep process as failed: %s", len(stale), stale
            )
        trials = self.study.get_trials(deepcopy=False)
        queued = {t.user_attrs.get("retry_of") for t in trials}
        for t in trials:
            if _redo(t) and t.number not in queued and t.params:
                self._requeue(t)
                log.info("trial #%d (%s) queued to run again", t.number, t.user_attrs["error"][:60])
        return stale

    def _requeue(self, t: Any) -> None:
        """`study.enqueue_trial(t.params)`, keeping a grid cell's id: GridSampler needs it on every
        trial it sees (an enqueued trial without one breaks its after_trial)."""
        keep = {k: t.system_attrs[k] for k in ("grid_id", "search_space") if k in t.system_attrs}
        self.study.add_trial(
            optuna.trial.create_trial(
                state=State.WAITING,
                system_attrs={"fixed_params": t.params, **keep},
                user_attrs={"retry_of": t.number},
            )
        )

    def claim(self, n_jobs: int, n_trials: int, on_stale: Callable[[list[int], str], None]):
        """Up to n_jobs new trials, so that the study never counts more than n_trials; []
        when it is full. Counting and asking happen under one lock."""
        with self.lock():
            self.recover(on_stale)  # a worker died meanwhile?
            batch = max(0, min(n_jobs, n_trials - self.counted()))
            trials = [self.study.ask() for _ in range(batch)]
            for t in trials:
                t.set_user_attr("sweeper", self.me)  # lets a later worker tell our dead trials
        return trials

    @staticmethod
    def trial_id(trial: Any) -> int:
        """The trial's id in the storage, which a job needs to reach its live trial."""
        return trial._trial_id

    def attrs(self, trial: Any) -> dict[str, Any]:
        """The trial's user attributes as they are now in the storage (the job sets some)."""
        return self.study._storage.get_trial(trial._trial_id).user_attrs

    def last_report(self, trial: Any) -> tuple[int, float] | None:
        """The trial's last (epoch, value) reported to the pruner."""
        steps = self.study._storage.get_trial(trial._trial_id).intermediate_values
        return (max(steps), steps[max(steps)]) if steps else None

    def record(self, trial: Any, outcome: Outcome) -> None:
        """Tell the study how the trial ended (its kind and reason stay on the trial)."""
        self._end(trial._trial_id, outcome)

    def _end(self, trial_id: int, outcome: Outcome) -> None:
        store = self.study._storage
        store.set_trial_user_attr(trial_id, "outcome", outcome.kind)
        if isinstance(outcome, Complete):
            self._tell(trial_id, values=outcome.values)
        elif isinstance(outcome, Pruned):
            self._tell(trial_id, state=State.PRUNED)
        else:
            store.set_trial_user_attr(trial_id, "error", outcome.reason)
            if isinstance(outcome, Stale):  # another process's trial: no sampler callback
                store.set_trial_state_values(trial_id, State.FAIL)
            elif store.get_trial(trial_id).state == State.RUNNING:
                self._tell(trial_id, state=State.FAIL)

    def _tell(self, trial_id: int, **kwargs: Any) -> None:
        number = self.study._storage.get_trial(trial_id).number
        try:
            self.study.tell(number, **kwargs)
        except RuntimeError as e:  # GridSampler calls study.stop() outside optimize() at the end
            if "Study.stop" not in str(e):
                raise

    def interrupt(self, trials: list[Any], reason: str) -> None:
        """Ctrl-C / SIGTERM: the trials this worker still runs end as interrupted."""
        for t in trials:
            if self.study._storage.get_trial(t._trial_id).state == State.RUNNING:
                self._end(t._trial_id, Interrupted(reason))

    def others_running(self) -> bool:
        """Whether live workers other than this one still run trials of the study."""
        with self.lock():
            return any(
                t.user_attrs.get("sweeper") != self.me and not self._dead(t)
                for t in self.study.get_trials(deepcopy=False, states=(State.RUNNING,))
            )

    def heartbeat(self, interval: float) -> Heartbeat:
        return Heartbeat(self.study, interval)


class Heartbeat:
    """Stamps `heartbeat` (unix time) on this worker's running trials every `interval` seconds, so
    a worker on another machine can tell a live trial from one whose worker died."""

    def __init__(self, study: Any, interval: float):
        self.study, self.interval = study, interval
        self.trial_ids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def track(self, trials: list[Any]) -> None:
        self.trial_ids = [t._trial_id for t in trials]
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
