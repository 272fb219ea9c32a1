"""The train recipe: `python -m transfersweep.train [overrides]` (or `transfersweep ...`).

One run = one paradigm (regime x strategy) on one backbone and data set:

    inputs   check the config, load the data, build the model      transfersweep.inputs
    stages   source stages once (reused across runs), then the     transfersweep.stages
             target stages once per repeat (trainer.repeats: k-shot
             draw and seed, transfersweep.repeats)
    results  mean, std, 95% CI over repeats, summary.json, checkpoint  transfersweep.results

A single run checks its input before the MLflow run opens, so a bad value costs seconds and
leaves no run behind; a sweep trial opens its run first, so a trial that fails on bad input
is still visible (FAILED, with the reason) beside its siblings.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from transfersweep.config import register_schemas
from transfersweep.errors import TransferSweepError
from transfersweep.paradigm import Paradigm

log = logging.getLogger("transfersweep")

register_schemas()


def run(cfg: DictConfig) -> float:
    """Run one paradigm; returns the objective (trainer.objective): its mean over repeats."""
    from transfersweep import cores, inputs, progress, scores, tracking
    from transfersweep.memory import memory_guard
    from transfersweep.sweep.trial import TrialLink

    paradigm, link = Paradigm.from_cfg(cfg), TrialLink.from_hydra(cfg)
    tracking.check_server(cfg)  # before minutes of data and model set-up
    link.set_attrs({"paradigm": paradigm.to_dict()})
    tags = paradigm.tags() | {"backbone": cfg.backbone.name, "data": cfg.data.name}
    if link.active:
        tags |= {"trial": str(link.number), "study": str(link.study)}
    tags |= dict(cfg.tracking.tags)
    log.info("%s | %s on %s", paradigm, cfg.backbone.name, cfg.data.name)
    if not link.active:  # a bad value fails in a second, before torch loads (resume's state does)
        from transfersweep.validation import validate

        validate(cfg)
    from transfersweep import resume

    state = resume.open_run(cfg, link.study if link.active else None, link.number)
    name = cfg.tracking.run_name or paradigm.name
    track = functools.partial(
        tracking.start, cfg, name, tags, state.run_id if state else None
    )  # a resumed run continues its MLflow run
    with resume.kept_on_interrupt(state), progress.installed(state), cores.registered():
        with track() if link.active else nullcontext() as early:
            ready = memory_guard(
                cfg, "preparing data and model", inputs.load, cfg, link.parallel_jobs
            )
            with nullcontext(early) if early else track() as mlrun:
                out = memory_guard(cfg, "training", train, ready, cfg, paradigm, link, mlrun)
    where = f"MLflow run {mlrun.run_id} in {tracking.redact(mlrun.uri)} -> `make ui`, then {mlrun.ui_url()}"
    shown = [out.objective] + [
        n for s in ("val", "test", "ood") if (n := scores.on(out.objective, s)) in out.record.scores
    ]
    shown = list(dict.fromkeys(shown))  # the objective first, then its metric elsewhere
    log.info(
        "done: %s | %s on %s | target %s | %.0fs | %s",
        paradigm, cfg.backbone.name, cfg.data.name,
        "  ".join(f"{n} {_pm(out.estimate(n))}" for n in shown),
        out.seconds, where if cfg.tracking.enabled else "tracking off",
    )  # fmt: skip
    return out.value


def _pm(e: Any) -> str:
    """0.8156 ± 0.0210 (95% CI, n=5), or the bare value of a single repeat."""
    return f"{e.mean:.4f}" if e.ci95 is None else f"{e.mean:.4f} ± {e.ci95:.4f} (95% CI, n={e.n})"


def train(ready: Any, cfg: DictConfig, paradigm: Paradigm, link: Any, mlrun: Any):
    """Source stages once, the target stages once per repeat (each from the same start, on its
    own k-shot draw and seed: transfersweep.repeats), then the results. The first repeat's
    last stage feeds the sweep's pruner. An interrupted run continues where it stood
    (transfersweep.progress: asked once here, and by the stages and the loop as they go)."""
    from transfersweep import progress, results, stages
    from transfersweep import repeats as repeats_mod

    t0 = time.perf_counter()
    results.log_inputs(mlrun, cfg, ready)
    pruning = link.pruning(cfg.pruner)
    standing = progress.begin(mlrun, ready.stages, pruning)
    plan = repeats_mod.plan(cfg.trainer)
    if len(plan) > 1 and cfg.trainer.repeat_over != "seed" and ready.data.target.k_shot is None:
        log.info("data.target.k_shot=null: every repeat trains on all target images (seeds vary)")
    target_stages = stages.pretrain(ready, cfg, mlrun)
    start = None
    if stages.needs_start(ready.stages, len(plan)):
        start = progress.start(lambda: stages.snapshot(ready))
    repeats = list(standing.repeats)  # scored before an interruption
    for i, rep in enumerate(plan):
        if any(r.index == rep.index for r in repeats):
            continue
        if start is not None and i > 0:
            stages.restore(ready, start)
        report = progress.recording(pruning.report) if pruning is not None and i == 0 else None
        repeats.append(stages.repeat(ready, cfg, target_stages, rep, mlrun, report, start))
        progress.repeat_done(repeats[-1])
    seconds = time.perf_counter() - t0 + standing.elapsed_before
    return results.log(mlrun, link, cfg, paradigm, ready, repeats, seconds)


@hydra.main(config_path=str(Path(__file__).parent / "conf"), config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        from transfersweep.tracking import redact_hydra_record

        redact_hydra_record()
        return run(cfg)
    except TransferSweepError as e:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweeper records the failed trial and goes on
        log.error("error: %s", e)
        sys.exit(2)
    finally:  # the run's model, data and optimizer are freed by now: the next trial's room
        from transfersweep.memory import release

        release()


def cli() -> None:
    """Console entry: SIGTERM (kill, a scheduler's time limit) unwinds like Ctrl-C, so the MLflow
    run ends KILLED and a sweep marks its trial FAIL, instead of both staying RUNNING."""
    import signal

    from transfersweep import memory

    memory.restart_with_huge_pages()  # first: it starts the command again where it helps

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)
    from transfersweep import cores

    cores.limit_native()  # before numpy/torch load their BLAS pools
    main()


if __name__ == "__main__":
    cli()
