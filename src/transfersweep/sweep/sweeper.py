"""The transfersweep sweeper: a sweep of paradigms as a sequence of named steps.

    open the study and its MLflow parent run   (once per study, under the study lock)
    claim the next trials                      (workers.py: exact n_trials over all workers)
    run them                                   (sampling.py: parameters -> job overrides)
    record each outcome                        (outcome.py: complete / pruned / failed / ...)
    confirm the top paradigms on fresh repeats (confirm.py, by the last worker to stop)
    summarise, with the verdict                (summary.py, verdict.py)

It keeps going when a trial fails (within a failure budget), ends with a clear message when
nothing succeeds, and prints one progress line per trial. The stock Hydra Optuna sweeper
provides the search-space parsing and launcher set-up (through hydra_optuna.py).

(Over 400 lines on purpose: the steps read in order as one class; each step's work lives in
its own module, what stays here is the order and what happens when a step fails.)
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from transfersweep import scores, tracking
from transfersweep.errors import TransferSweepError
from transfersweep.paradigm import Paradigm
from transfersweep.scores import Record
from transfersweep.strategies import Strategy
from transfersweep.sweep import (
    backbones,
    confirm,
    default,
    identity,
    outcome,
    prerank,
    sampling,
    summary,
)
from transfersweep.sweep import budget as budget_mod
from transfersweep.sweep import space as space_mod
from transfersweep.sweep.confirm import ConfirmSettings
from transfersweep.sweep.hydra_optuna import SearchSpace, StockOptunaSweeper
from transfersweep.sweep.storage import check_reachable, storage_url
from transfersweep.sweep.workers import Workers

log = logging.getLogger("transfersweep.sweep")


def _resolve(dotpath: str):
    module, _, name = dotpath.rpartition(".")
    return getattr(importlib.import_module(module), name)


@dataclass
class Tally:
    """This worker's trials so far, for the failure budget and the final message."""

    ended: int = 0
    failed: int = 0
    first_error: str | None = None

    def add(self, result: outcome.Outcome) -> None:
        self.ended += 1
        if isinstance(result, outcome.Failed):
            self.failed += 1
            self.first_error = self.first_error or result.reason


class TransferSweeperImpl(StockOptunaSweeper):
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
        confirm: Any = None,
        register_champion: bool = True,
        model_name: str | None = None,
        objectives: Any = None,
        resume_changed: bool = False,
        default_first: bool = True,
        time_budget: Any = None,
    ) -> None:
        # The hook is resolved here, not through hydra.utils.instantiate (Hydra 1.4 would warn).
        super().__init__(
            sampler, direction, storage, study_name, n_trials, n_jobs, max_failure_rate, None, params
        )  # fmt: skip
        self.custom_search_space_extender = (
            _resolve(custom_search_space) if custom_search_space else None
        )
        self.min_trials_for_failure_rate = min_trials_for_failure_rate
        self.write_summary = summary
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self._strategies: dict[Any, type[Strategy]] = {}
        self.confirm = ConfirmSettings(**(confirm or {}))
        self.register_champion, self.model_name = register_champion, model_name
        self.objectives: list[str] = list(objectives or [])  # [] until sweep(): trainer.objective
        self.resume_changed = resume_changed
        self.default_first = default_first
        self.time_budget = time_budget  # "30m", seconds, or None (sweep/budget.py)
        self.budget: budget_mod.Budget | None = None
        self.confirm_note: str | None = None  # what the budget left of the confirmation
        self.space_note: str | None = None  # why the space is narrower than configured
        self.ranking: prerank.Ranking | None = None  # search.backbones before training

    def sweep(self, arguments: list[str]) -> None:
        try:
            shaped = space_mod.shape(self.config, self.params, arguments, self.compose,
                                     self.hydra_context.config_loader.get_group_options("freeze"))  # fmt: skip
            seconds = budget_mod.parse(self.time_budget)
            if seconds is not None:
                self.budget = budget_mod.Budget(seconds, str(self.time_budget))
            presets = self.hydra_context.config_loader.get_group_options("backbone")
            if wanted := backbones.entries(self.config):
                shaped = self._with_backbones(shaped, wanted, presets)
        except TransferSweepError as e:
            log.error("error: %s", e)
            sys.exit(2)
        arguments, self.params, self.space_note = shaped.arguments, shaped.params, shaped.note
        if self.space_note:
            log.info("%s", self.space_note)
        space = self.search_space(arguments)
        space.backbones = {b: backbones.overrides(b, presets) for b in shaped.backbones}
        self.objectives = self.objectives or [str(self.config.trainer.objective)]
        self._check_settings()
        workers, parent = self._open(arguments, space)
        tally, status, batch, confirmed = Tally(), "FINISHED", [], None
        heartbeat = workers.heartbeat(self.heartbeat_s)
        try:
            while self._in_time(workers) and (
                batch := workers.claim(self.n_jobs, self.n_trials, self._end_children(parent))
            ):
                heartbeat.track(batch)
                t0 = time.perf_counter()
                for trial, result in zip(
                    batch, self._run(batch, space, workers, parent), strict=True
                ):
                    workers.record(trial, result)
                    tally.add(result)
                    self._progress(workers, trial, space, result, time.perf_counter() - t0)
                if self._over_budget(tally, workers):
                    status = "FAILED"
                    break
            batch = []
            if status == "FINISHED":
                confirmed = self._confirm(workers, space, parent)
            if self.budget is not None:
                workers.study.set_user_attr(
                    "budget_note",
                    budget_mod.note(self.budget, workers.study, self.n_trials, self.confirm_note),
                )
        except BaseException as e:  # Ctrl-C / SIGTERM: the trials in flight end interrupted
            status = "KILLED"
            self._interrupted(workers, batch, parent, e)
            raise
        finally:
            heartbeat.stop()
            self._summarise(workers, parent, status, confirmed)
        self._finish(workers, tally, status)

    def _with_backbones(
        self, shaped: space_mod.Shaped, wanted: list[str], presets: list[str]
    ) -> space_mod.Shaped:
        """The backbone dimension, ranked before training (prerank.py) and cut to its top
        search.prerank.keep."""
        space_mod.refuse_fixed_backbone(shaped.arguments, wanted)
        backbones.check_names(wanted, presets)
        fixed = [*space_mod.plain(shaped.arguments), "regime=target_only", "freeze=last_layer"]

        def configs(entries: list[str]) -> dict[str, Any]:  # the target's images, frozen
            return backbones.composed(entries, presets, fixed, self.compose)

        self.ranking = prerank.ordered(wanted, configs, self.config.search.prerank)
        kept = self.ranking.kept if self.ranking is not None else wanted
        if self.ranking is not None and self.ranking.dropped:
            log.info(
                "search.prerank.keep=%d: searching %s; dropped before training: %s",
                len(kept), ", ".join(kept), ", ".join(self.ranking.dropped),
            )  # fmt: skip
        return space_mod.with_backbones(shaped, kept, presets, self.compose)

    def _defaults(self, space: SearchSpace) -> list[dict[str, Any]]:
        """The first trials: the config's paradigm, once per searched backbone (best-ranked
        first) with that backbone's own optimizer preset."""
        strategy_of = functools.partial(self._strategy_of, space)
        if not space.backbones:
            return [default.params(self.config, space, strategy_of)]
        fixed = [f"{k}={v}" for k, v in space.fixed.items() if k != backbones.KEY]
        out = []
        for entry, extra in space.backbones.items():
            cfg = self.compose([*fixed, *extra, f"trial.backbone={entry}"])
            values = default.params(cfg, space, strategy_of)
            out.append(
                values | ({backbones.KEY: entry} if backbones.KEY in space.distributions else {})
            )
        return out

    def _open(self, arguments: list[str], space: SearchSpace) -> tuple[Workers, Any]:
        """The study and its MLflow parent run, created by the first worker (under the study
        lock: a fresh SQLite store must not be migrated by two processes at once)."""
        cfg = self.config
        storage, study_name = storage_url(self.storage), self.study_name or "transfersweep"
        try:
            check_reachable(storage)
            tracking.check_server(cfg)
        except TransferSweepError as e:
            log.error("error: %s", e)
            sys.exit(2)
        workers = Workers(storage, study_name, self.stale_after_s)
        task_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        searched = {k: str(v) for k, v in (self.params or {}).items()} | {
            a.split("=", 1)[0]: a.split("=", 1)[1] for a in arguments if "=" in a
        }
        with workers.lock():
            study = workers.open(self.sampler, self.directions())
            about = identity.record(task_cfg, self.directions(), self.objectives, space)
            changed = identity.check(study, about, self.resume_changed)
            if changed:
                log.error(
                    "error: study %r holds trials of another sweep: its %s differ%s. Fix: a new "
                    "study name (hydra.sweeper.study_name=<name>, or STUDY=<name> with make), or "
                    "continue this study anyway with hydra.sweeper.resume_changed=true "
                    "(RESUME_CHANGED=1 with make)",
                    study_name, " and ".join(changed), "s" if len(changed) == 1 else "",
                )  # fmt: skip
                sys.exit(2)
            if self.space_note:
                study.set_user_attr("space_note", self.space_note)
            new = not study.trials
            if self.ranking is not None:
                study.set_user_attr(prerank.ATTR, self.ranking.to_dict())
            if self.default_first and not space.grid and new:
                for i, values in enumerate(self._defaults(space), 1):
                    default.enqueue(study, values)
                    log.info(
                        "trial %d is the default: %s",
                        i, ", ".join(f"{k}={v}" for k, v in values.items()),
                    )  # fmt: skip
            if cfg.tracking.enabled:  # the study names its parent run (a new study: a new one)
                known = study.user_attrs.get("parent_run_id")
                parent = tracking.open_parent(
                    task_cfg, study_name, storage, searched, known, resumed=not new
                )
                study.set_user_attr("parent_run_id", parent.run_id)
            else:
                parent = tracking.NoRun()
            parent.log_text(OmegaConf.to_yaml(cfg), "sweep_config.yaml")  # hydra.sweeper too
            if self.ranking is not None:
                prerank.log_to_parent(self.ranking, parent)
            workers.recover(self._end_children(parent))
            before = workers.counted()
        log.info(
            "sweep %r: %d trial(s) to run (n_trials=%d is the study's total%s) | storage %s | "
            "MLflow parent run %s",
            study_name, max(0, self.n_trials - before), self.n_trials,
            f", {before} already in the study" if before else "",
            tracking.redact(str(storage)), parent.run_id,
        )  # fmt: skip
        return workers, parent

    def _check_settings(self) -> None:
        directions, objectives = self.directions(), self.objectives
        t, c = self.config.trainer, self.confirm
        problem = None
        if (bad := scores.objective_problem(t.objective, self.config.data.target)) is not None:
            problem = bad
        elif c.top_k < 0 or c.repeats < 1 or c.first_repeat < 0:
            problem = (
                f"hydra.sweeper.confirm={c}: use top_k >= 0 (0 = off), repeats >= 1 and "
                "first_repeat >= 0"
            )
        elif (
            c.top_k
            and c.first_repeat < t.first_repeat + t.repeats
            and c.first_repeat + c.repeats > t.first_repeat
        ):
            problem = (
                f"hydra.sweeper.confirm.first_repeat={c.first_repeat} reuses the search's repeats "
                f"{t.first_repeat}..{t.first_repeat + t.repeats - 1}: confirmation needs fresh ones; "
                f"set it to {t.first_repeat + t.repeats} or more"
            )
        elif len(directions) != len(objectives) or objectives[0] != t.objective:
            problem = (
                f"hydra.sweeper.objectives={objectives} does not fit "
                f"hydra.sweeper.direction={directions} and trainer.objective={t.objective}: give "
                f"one objective per direction, trainer.objective first (e.g. objectives="
                f"[{t.objective},target_seconds] direction=[maximize,minimize])"
            )
        elif len(directions) > 1 and self.config.pruner.name != "none":
            problem = (
                f"pruner.name={self.config.pruner.name} with {len(directions)} objectives: Optuna "
                "prunes single-objective studies only; use pruner.name=none (sweep=pareto does)"
            )
        if problem:
            log.error("error: %s", problem)
            sys.exit(2)

    @staticmethod
    def _end_children(parent: Any):
        return lambda numbers, reason: tracking.kill_children(parent, numbers, reason)

    def _strategy_of(self, space: SearchSpace, freeze_option: Any) -> type[Strategy]:
        """The strategy class behind a freeze option, composed (once per option) with the
        sweep's fixed overrides as its jobs will be. One that does not load has no keys to
        sample; its trial fails in the job with the reason."""
        from transfersweep import strategies

        if freeze_option not in self._strategies:
            fixed = [
                f"{k}={v}"
                for k, v in space.fixed.items()
                if not k.startswith("freeze") and not (space.backbones and k == backbones.KEY)
            ]
            try:
                freeze = (
                    self.compose([*fixed, f"freeze={freeze_option}"]).freeze
                    if freeze_option is not None
                    else self.config.freeze
                )
                cls = strategies.get(str(freeze.strategy), freeze.get("module"))
            except Exception as e:
                log.warning("freeze=%s: %s", freeze_option, e)
                cls = Strategy
            self._strategies[freeze_option] = cls
        return self._strategies[freeze_option]

    def _run(self, batch: list[Any], space: SearchSpace, workers: Workers, parent: Any):
        """Launch one job per trial, told which trial it is and under which parent run."""
        cfg = self.config
        jobs = [
            sampling.overrides(
                trial, space, functools.partial(self._strategy_of, space), cfg.search.freeze, cfg,
                self.custom_search_space_extender,
            )
            + (f"trial.number={trial.number}", f"trial.id={workers.trial_id(trial)}")
            + ((f"tracking.parent_run_id={parent.run_id}",) if cfg.tracking.enabled else ())
            for trial in batch
        ]  # fmt: skip
        returns = self.launch(jobs)
        return [
            self._with_objectives(workers, t, outcome.from_job(ret, workers.last_report(t)))
            for t, ret in zip(batch, returns, strict=True)
        ]

    def _with_objectives(self, workers: Workers, trial: Any, result: outcome.Outcome):
        """A completed trial of a multi-objective study with its other objectives, read from
        the attributes its run reported (results.py)."""
        if not isinstance(result, outcome.Complete) or len(self.objectives) == 1:
            return result
        attrs = workers.attrs(trial)
        record = Record.of_trial(attrs)
        found = {k: v for k, v in attrs.items() if isinstance(v, (int, float))}
        if record is not None:  # any score by name: its mean over the repeats
            found |= {k: e.mean for k in record.scores if (e := record.estimate(k)) is not None}
        missing = [k for k in self.objectives[1:] if k not in found]
        if missing:
            return outcome.Failed(
                f"the run reported no {', '.join(missing)} (hydra.sweeper.objectives)"
            )
        return outcome.Complete(result.value, tuple(float(found[k]) for k in self.objectives[1:]))

    def _over_budget(self, tally: Tally, workers: Workers) -> bool:
        over = (
            tally.ended >= self.min_trials_for_failure_rate
            and tally.failed / tally.ended > self.max_failure_rate
            and workers.counted() < self.n_trials
        )
        if over:
            log.error(
                "sweep stopped: %d of %d trials failed (more than hydra.sweeper.max_failure_rate=%s). "
                "First error: %s",
                tally.failed, tally.ended, self.max_failure_rate, tally.first_error,
            )  # fmt: skip
        return over

    def _interrupted(self, workers: Workers, batch: list[Any], parent: Any, e: BaseException):
        reason = (
            f"interrupted ({type(e).__name__}: {e})"
            if str(e)
            else f"interrupted ({type(e).__name__})"
        )
        workers.interrupt(batch, reason)
        parent.set_tags({"interrupted": reason})
        log.error(
            "sweep %r %s; finished trials are kept, run it again to resume",
            workers.study_name, reason,
        )  # fmt: skip

    def _best_line(self, workers: Workers) -> str:
        study = workers.study
        if len(self.objectives) > 1:
            return f"Pareto front: {len(study.best_trials)} trial(s)"
        try:
            b = study.best_trial
        except ValueError:
            return "no best yet"
        return (
            f"best {b.value:.4f} (#{b.number} {Paradigm.from_trial(b.user_attrs, b.params).name})"
        )

    def _progress(self, workers: Workers, trial: Any, space: SearchSpace, result, seconds: float):
        attrs = workers.attrs(trial)
        chosen = space.fixed | trial.params
        name = Paradigm.from_trial(attrs, chosen).name
        others = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in trial.params.items()
            if k not in ("regime", "freeze", backbones.KEY)
        )
        best = self._best_line(workers)
        if isinstance(result, outcome.Complete):
            record = Record.of_trial(attrs)
            e = record.estimate(self.objectives[0]) if record is not None else None
            spread = f" ± {e.ci95:.4f} (95% CI, n={e.n})" if e and e.ci95 is not None else ""
            more = "".join(
                f", {k} {v:.4g}" for k, v in zip(self.objectives[1:], result.more, strict=True)
            )
            shown = f"{self.objectives[0]} {result.value:.4f}{spread}{more}"
        elif isinstance(result, outcome.Pruned):
            shown = f"PRUNED {result.reason}"
        else:
            shown = f"FAILED: {result.reason}"
        log.info(
            "trial %d/%d [#%d] %s %s -> %s | %s | %.0fs",
            workers.ended(), self.n_trials, trial.number, name, others, shown, best, seconds,
        )  # fmt: skip

    def _confirm(self, workers: Workers, space: SearchSpace, parent: Any) -> list[Any] | None:
        """The confirmation step (confirm.py), by the last worker to stop, with tracking on."""
        if self.confirm.top_k == 0 or not self.write_summary or workers.others_running():
            return None
        if isinstance(parent, tracking.NoRun):
            log.info("confirmation skipped: it reads its runs back from MLflow (tracking is off)")
            return None
        best = summary.best_per_cell(summary.rows(workers.study, self.objectives[0]))
        if self.budget is not None and not self._confirmation_fits(workers, best):
            return None
        strategy_of = functools.partial(self._strategy_of, space)
        return confirm.run(best, self.confirm, space, strategy_of, parent, self.launch) or None

    def _in_time(self, workers: Workers) -> bool:
        """Whether the time budget (if any) lets another trial start: a typical trial would
        end within it. The trials in flight are not stopped."""
        if self.budget is None or self.budget.allows_trial(workers.study):
            return True
        b, study = self.budget, workers.study
        log.info(
            "time budget %s: no new trial (%s spent, a trial takes about %s); %d trial(s) ran",
            b.given, budget_mod.show(b.elapsed(study)), budget_mod.show(b.typical(study) or 0.0),
            workers.counted(),
        )  # fmt: skip
        return False

    def _confirmation_fits(self, workers: Workers, best: dict[Any, Any]) -> bool:
        """The confirmation's estimate against what the budget has left; the note says which."""
        assert self.budget is not None
        rows = confirm.candidates(best, self.confirm.top_k)
        factor = self.confirm.repeats / max(1, int(self.config.trainer.repeats))
        need = self.budget.confirmation_estimate(workers.study, [r.number for r in rows], factor)
        left = self.budget.left(workers.study)
        if need <= left:
            self.confirm_note = f"run in the {budget_mod.show(max(left, 0.0))} left"
            return True
        self.confirm_note = (
            f"cut (about {budget_mod.show(need)} needed, {budget_mod.show(max(left, 0.0))} left): "
            "the search's verdict stands unconfirmed"
        )
        log.info("time budget %s: confirmation %s", self.budget.given, self.confirm_note)
        return False

    def _champion(self, workers: Workers, parent: Any, verdict: Any) -> None:
        """Register the winner (champion.py); a registry failure is logged, not fatal: the
        sweep's results are already stored."""
        from transfersweep.sweep import champion

        name = self.model_name or workers.study_name
        try:
            version = champion.register(
                parent.client, name, verdict.winner, verdict, workers.study_name
            )
        except Exception as e:
            log.warning("champion: not registered (%s: %s)", type(e).__name__, e)
            return
        if version is not None:
            parent.set_tags(
                {
                    "champion": f"models:/{name}/{version}",
                    "champion_uri": f"models:/{name}@{champion.ALIAS}",
                }
            )
            log.info(
                "champion: python -m transfersweep.predict model=models:/%s@%s images=<folder>",
                name, champion.ALIAS,
            )  # fmt: skip

    def _summarise(
        self, workers: Workers, parent: Any, status: str, confirmed: list[Any] | None = None
    ) -> None:
        """The last worker to stop writes the summary and ends the parent run; a worker that
        stops while others still run trials leaves the parent RUNNING for them."""
        if isinstance(parent, tracking.NoRun):
            return
        if workers.others_running():
            parent.flush()
            log.info(
                "trials of study %r still run in other workers; the last one to finish "
                "writes the summary", workers.study_name,
            )  # fmt: skip
            return
        try:
            if self.write_summary:
                s = summary.log_to_parent(workers.study, parent, self.objectives[0], confirmed)
                log.info("paradigm table (study %r):\n%s", workers.study_name, s.markdown)
                log.info("MLflow: `make ui`, then %s", parent.ui_url())
                if self.register_champion and status == "FINISHED" and s.verdict.winner:
                    self._champion(workers, parent, s.verdict)
                log.info("verdict (study %r): %s", workers.study_name, s.verdict.text)
        finally:
            parent.flush()
            parent.client.set_terminated(parent.run_id, status=status)

    def _finish(self, workers: Workers, tally: Tally, status: str) -> None:
        """Exit 1 with one clear line when nothing succeeded or the budget ran out; otherwise
        write the stock sweeper's optimization_results.yaml."""
        import optuna

        study = workers.study
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
            log.error(
                "sweep %r: no trial succeeded (%d failed, %d pruned). First error: %s. Run one trial "
                "on its own (same overrides, without -m) to see the full error.",
                workers.study_name, tally.failed, pruned, tally.first_error,
            )  # fmt: skip
            sys.exit(1)
        if len(self.objectives) == 1:
            best = study.best_trial
            result = {"name": "optuna", "best_params": best.params, "best_value": best.value}
        else:  # as the stock sweeper writes a multi-objective result
            result = {
                "name": "optuna",
                "solutions": [{"params": t.params, "values": t.values} for t in study.best_trials],
            }
        os.makedirs(self.config.hydra.sweep.dir, exist_ok=True)  # absent when this ran no trial
        OmegaConf.save(
            OmegaConf.create(result), f"{self.config.hydra.sweep.dir}/optimization_results.yaml"
        )
        if status == "FAILED":
            sys.exit(1)
