"""The transfersweep sweeper: the Hydra Optuna sweeper's search, plus what sweeps of paradigms need.

Reuses the stock sweeper (hydra-optuna-sweeper 1.4) for parsing the search
space, sampling and the custom search-space hook, and replaces its loop to:
- tell each job which Optuna trial it is (`trial.number`, `trial.id` overrides)
  and nest its MLflow run under one parent run per study (`tracking.parent_run_id`);
- keep going when a trial fails (Optuna FAIL, MLflow FAILED with the reason),
  within a sweep-level failure budget, and end with a clear message, not a
  traceback, when nothing succeeds;
- print one progress line per trial and write the summary to the parent run.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import os
import socket
import sys
import time
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf

from transfersweep import tracking
from transfersweep.sweep import summary
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
        return (
            None,
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500],
        )
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


def mark_stale(study: Any, parent: Any) -> list[int]:
    """Trials left RUNNING by a sweep process of this host that no longer exists (kill -9, power
    loss) become FAIL in Optuna and KILLED in MLflow, reason "stale". Trials owned by a live
    process or another host are left alone: they may still be running."""
    host = socket.gethostname()
    stale = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = t.user_attrs.get("sweeper")
        if not owner or not owner.startswith(f"{host}:") or _alive(int(owner.rsplit(":", 1)[1])):
            continue
        study._storage.set_trial_user_attr(
            t._trial_id, "error", f"stale: its sweep process ({owner}) died"
        )
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
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
    return stale


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
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            sampler=self.sampler,
            direction=self._get_directions()[0],
            load_if_exists=True,
        )
        before = len(study.trials)
        space = {k: str(v) for k, v in (self.params or {}).items()} | {
            a.split("=", 1)[0]: a.split("=", 1)[1] for a in arguments if "=" in a
        }
        task_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        parent = (
            tracking.open_parent(task_cfg, study_name, storage, space)
            if cfg.tracking.enabled
            else tracking.NoRun()
        )
        parent.log_text(OmegaConf.to_yaml(cfg), "sweep_config.yaml")  # hydra.sweeper included
        mark_stale(study, parent)
        owner = f"{socket.gethostname()}:{os.getpid()}"  # lets a later sweep tell our dead trials
        log.info(
            "sweep %r: %d trial(s) to run%s | storage %s | MLflow parent run %s",
            study_name, self.n_trials, f", {before} already in the study" if before else "",
            tracking.redact(str(storage)), parent.run_id,
        )  # fmt: skip

        done = failed = 0
        first_error: str | None = None
        status = "FINISHED"
        trials: list[Any] = []
        try:
            while done < self.n_trials:
                batch = min(self.n_jobs, self.n_trials - done)
                trials = [study.ask() for _ in range(batch)]
                for t in trials:
                    study._storage.set_trial_user_attr(t._trial_id, "sweeper", owner)
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
                        _tell(study, trial, state=optuna.trial.TrialState.FAIL)
                    self._progress(study, trial, done, value, error, time.perf_counter() - t0)
                if (
                    done >= self.min_trials_for_failure_rate
                    and failed / done > self.max_failure_rate
                    and done < self.n_trials
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
                if study._storage.get_trial(t._trial_id).state == optuna.trial.TrialState.RUNNING:
                    study._storage.set_trial_user_attr(t._trial_id, "error", reason)
                    _tell(study, t, state=optuna.trial.TrialState.FAIL)
            parent.set_tags({"interrupted": reason})
            log.error(
                "sweep %r %s; finished trials are kept, run it again to resume", study_name, reason
            )
            raise
        finally:
            self._finish(study, parent, status)

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
        done: int,
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
        log.info(
            "trial %d/%d [#%d] %s %s -> %s | %s | %.0fs",
            done,
            self.n_trials,
            trial.number,
            paradigm,
            others,
            result,
            best,
            seconds,
        )

    def _finish(self, study: Any, parent: Any, status: str) -> None:
        if isinstance(parent, tracking.NoRun):
            return
        try:
            if self.write_summary:
                head = summary.log_to_parent(study, parent)
                log.info("paradigm table (study %r):\n%s", study.study_name, head["table"])
                log.info("MLflow: `make ui`, then %s", parent.ui_url())
        finally:
            parent.flush()
            parent.client.set_terminated(parent.run_id, status=status)
