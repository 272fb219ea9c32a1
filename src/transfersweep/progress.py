"""Where a run stands: the hook through which an interrupted run continues, carried by nobody.

transfersweep.resume implements it and owns the format; `installed(state)` makes one run's
state the current one while the run trains (train.run). Without one (trainer.resume=false,
or another process owns this config) every call here is a no-op: nothing was done before,
nothing is saved. The callers, and what they ask:

    recipe (train.train)  begin(mlrun, stages, pruning) -> Standing: once, where the run stands
                          start(make): the weights every repeat starts from (saved, or made now)
                          recording(report), repeat_done(result)
    stage runner          past_source(), resumed_in(repeat): which stages the saved state is past
                          with stage(i, repeat): ...      the stage that trains now
                          resumed_phase(), restore_model(model); with phase(k, model, best): ...
    loop (engine.fit)     restore(...) -> the epoch to continue after; save(epoch, ...)

A context variable, not a parameter: the stage runner and the loop read as if no run were
ever interrupted, and a run with resume off pays one lookup per epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

_run: ContextVar[Any] = ContextVar("transfersweep_resume", default=None)  # resume.Resume
_stage: ContextVar[Any] = ContextVar("transfersweep_stage", default=None)  # StageCheckpoint
_phase: ContextVar[Any] = ContextVar("transfersweep_phase", default=None)  # FitCheckpoint


@contextmanager
def _set(var: ContextVar[Any], value: Any) -> Iterator[None]:
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def installed(state: Any) -> Any:
    """`state` (resume.Resume, or None) is the current run's while the block runs."""
    return _set(_run, state)


# ----- the recipe ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Standing:
    repeats: list[Any] = field(default_factory=list)  # repeats.RepeatResult scored before
    elapsed_before: float = 0.0  # training seconds before the interruption


def begin(mlrun: Any, stages: list[Any], pruning: Any) -> Standing:
    """Where the run stands (said in the log and the run's tags when it resumes); the pruner
    gets the reports the interrupted run had made."""
    s = _run.get()
    if s is None:
        return Standing()
    s.attach(mlrun, stages, pruning)
    return Standing(s.done_repeats(), s.elapsed_before)


def start(make: Callable[[], Any]) -> Any:
    """The weights every repeat's target stages start from: the saved ones once the source
    stages are past (they are not trained again), else `make()`, saved for a later resume."""
    s = _run.get()
    if s is not None and s.past_source():
        return s.start()
    weights = make()
    if s is not None:
        s.set_start(weights)
    return weights


def recording(report: Any) -> Any:
    """The pruner's feed, also kept for a resumed trial to replay."""
    s = _run.get()
    return s.recording(report) if s is not None and report is not None else report


def repeat_done(result: Any) -> None:
    s = _run.get()
    if s is not None:
        s.repeat_done(result)


# ----- the stage runner ---------------------------------------------------------------------


def past_source() -> bool:
    """The saved state stands in a target stage: every source stage is done."""
    s = _run.get()
    return s is not None and s.past_source()


def resumed_in(repeat: int | None) -> int | None:
    """The stage the saved state stands in, when it is one of this repeat's (None: the source
    stages'); the stages before it are done, their result in the saved model."""
    s = _run.get()
    p = s.point if s is not None else None
    return p.stage if p is not None and p.repeat == repeat else None


def stage(index: int, repeat: int | None, save: bool = True) -> Any:
    """Stage `index` (of repeat `repeat`; None: a source stage) trains in this block: it is
    restored when the saved state stands in it, and saves each epoch unless `save` is False
    (a stage trained again only to rebuild what a later one needs)."""
    s = _run.get()
    return _set(_stage, s.stage(index, repeat) if s is not None and save else None)


def resumed_phase() -> int | None:
    """The phase of the current stage the saved state stands in (None: not this stage)."""
    c = _stage.get()
    return c.saved_phase if c is not None else None


def restore_model(model: Any) -> Any:
    """Load the saved model; returns the best of the stage's earlier phases (or None)."""
    return _stage.get().restore_model(model)


def phase(index: int, model: Any, stage_best: Any) -> Any:
    """Phase `index` of the current stage trains (part of) `model` in this block;
    `stage_best`: the stage's best before it (stages.StageResult or None)."""
    c = _stage.get()
    return _set(_phase, c.phase(index, model, stage_best) if c is not None else None)


# ----- the loop -----------------------------------------------------------------------------


def restore(fit_model: Any, opt: Any, sched: Any, scaler: Any, gen: Any, result: Any) -> int:
    """Put the saved epoch of this phase back; returns it (0: nothing saved here)."""
    f = _phase.get()
    return f.restore(fit_model, opt, sched, scaler, gen, result) if f is not None else 0


def save(epoch: int, opt: Any, sched: Any, scaler: Any, gen: Any, result: Any) -> None:
    """Epoch `epoch` is complete: save what the next one needs."""
    f = _phase.get()
    if f is not None:
        f.save(epoch, opt, sched, scaler, gen, result)
