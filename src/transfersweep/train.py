"""The train entrypoint: `python -m transfersweep.train [overrides]` (or `transfersweep ...`).

One run = one paradigm (regime x freeze) on one backbone and data set:

    prepare: validate config -> load data -> build model (weights) -> check freeze
    execute: [MLflow run] source stages once; target stages x trainer.repeats seeds,
             each: fresh head, freeze, fit, keep best weights -> val (objective) + test
             -> checkpoint of the best repeat

In a single run everything the user can get wrong is checked before the
MLflow run opens, so a bad value costs seconds and leaves no run behind. In a
sweep trial the child run opens first, so a trial that fails on bad input is
still visible (FAILED, with the reason) next to its siblings.
Heavy imports (torch, timm, mlflow) happen inside `run`, keeping `--help`
and config errors fast.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from transfersweep.config import register_schemas, validate
from transfersweep.errors import TransferSweepError
from transfersweep.regime import Stage, paradigm

log = logging.getLogger("transfersweep")

register_schemas()


@dataclass
class Prepared:
    stages: list[Stage]
    data: Any  # transfersweep.data.TransferData
    model: Any  # torch.nn.Module
    rt: Any  # engine.Runtime
    prep: Any  # data.Preprocess


@dataclass
class Outcome:
    val_acc: float  # mean over repeats: the objective
    val_std: float
    test_acc: float
    test_std: float
    seconds: float


def base_tags(cfg: DictConfig) -> dict[str, str]:
    name = paradigm(cfg)
    tags = {
        "paradigm": name,
        "regime": cfg.regime.name,
        "freeze": name.split("+", 1)[1],
        "freeze_strategy": str(getattr(cfg.freeze.strategy, "value", cfg.freeze.strategy)),
        "backbone": cfg.backbone.name,
        "data": cfg.data.name,
    }
    if cfg.trial.number is not None:
        tags |= {"trial": str(cfg.trial.number), "study": str(cfg.trial.study)}
    return tags | dict(cfg.tracking.tags)


def prepare(cfg: DictConfig) -> Prepared:
    """Everything that can fail on user input, before any training."""
    validate(cfg)
    from transfersweep import backbone, regime

    stages = regime.plan(cfg)
    backbone.prepare_hub(cfg)  # before timm is imported

    import torch

    from transfersweep import data as data_mod
    from transfersweep import engine, freezing

    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    backbone.check_name(cfg.backbone.name)
    rt = engine.Runtime.from_cfg(cfg.trainer)
    data = data_mod.build(cfg, need_source=regime.needs_source(stages))
    torch.manual_seed(cfg.seed)
    model = backbone.create(cfg, data.num_classes(stages[0].data))
    for s in stages:  # an impossible freeze setting fails now, not after pretraining
        if s.on_target:
            freezing.apply(model, s.freeze, s.n_blocks, cfg.backbone.name)
    freezing.apply(model, "full", 0, cfg.backbone.name)
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    mean, std = (
        model.pretrained_cfg.get("mean", (0.5,) * 3),
        model.pretrained_cfg.get("std", (0.5,) * 3),
    )
    prep = data_mod.Preprocess(mean, std, augment=cfg.data.augment).to(rt.device)
    log.info(
        "%s | backbone %s | data %s: target %s%s | device %s%s",
        paradigm(cfg),
        cfg.backbone.name,
        cfg.data.name,
        data.target.sizes(),
        f", source {data.source.sizes()}" if data.source else "",
        rt.device,
        f" ({rt.amp_dtype})" if rt.amp_dtype else "",
    )
    return Prepared(stages, data, model, rt, prep)


def _fit_stage(
    p: Prepared,
    cfg: DictConfig,
    stage: Stage,
    prefix: str,
    seed: int,
    mlrun: Any,
    pruning: Any = None,
):
    import torch

    from transfersweep import engine, features, freezing
    from transfersweep.config import FreezeStrategy
    from transfersweep.data import Batches

    model, data, rt = p.model, p.data, p.rt
    torch.manual_seed(seed)
    model.reset_classifier(data.num_classes(stage.data))  # every stage starts from a fresh head
    model.to(rt.device)
    fp = freezing.apply(model, stage.freeze, stage.n_blocks, cfg.backbone.name)
    log.info(
        "[%s] %d epochs on %s data | freeze %s: %s of %s parameters train (%d/%d blocks + head)",
        prefix, stage.epochs, stage.data.value, fp.strategy.value,
        f"{fp.trainable:,}", f"{fp.total:,}", fp.n_blocks, fp.total_blocks,
    )  # fmt: skip
    mlrun.log_metrics(
        {f"{prefix}/params_trainable": fp.trainable, f"{prefix}/params_total": fp.total}
    )

    def on_epoch(st: engine.EpochStats) -> None:
        log.info(
            "[%s] epoch %3d/%d  loss %.4f  acc %.3f  val_loss %.4f  val_acc %.3f  lr %.2e  %6.0f img/s  %.1fs",
            prefix, st.epoch, stage.epochs, st.train_loss, st.train_acc,
            st.val_loss, st.val_acc, st.lr, st.images_per_s, st.seconds,
        )  # fmt: skip
        metrics = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s")
        mlrun.log_metrics({f"{prefix}/{m}": getattr(st, m) for m in metrics}, step=st.epoch)
        if pruning is not None:
            pruning.report(st.val_acc, st.epoch)  # may raise optuna.TrialPruned

    pin = rt.device.type == "cuda"
    train = data.train_batches(stage.data, cfg, seed=seed, pin_memory=pin)
    val = data.eval_batches(stage.data, "val", cfg, pin_memory=pin)
    fit_model, fit_prep = model, p.prep
    if stage.freeze == FreezeStrategy.last_layer:
        why = features.unavailable_reason(cfg)
        if why is None:  # the frozen backbone's features are computed once; the head trains on them
            t0 = time.perf_counter()
            unshuffled = Batches(
                train.images, cfg.trainer.eval_batch_size, shuffle=False, pin_memory=pin
            )
            train = features.cached_batches(train, features.extract(model, unshuffled, p.prep, rt))
            val = Batches(features.extract(model, val, p.prep, rt), val.batch_size, shuffle=False)
            fit_model, fit_prep = model.get_classifier(), features.NoPrep()
            log.info("[%s] feature cache: backbone features of %d images in %.1fs", prefix,
                     len(train.images) + len(val.images), time.perf_counter() - t0)  # fmt: skip
        else:
            log.info("[%s] feature cache off: %s", prefix, why)
        mlrun.set_tags({f"{prefix}/feature_cache": "on" if why is None else f"off: {why}"})
    result = engine.fit(
        fit_model,
        train,
        val,
        fit_prep,
        rt,
        cfg,
        stage.epochs,
        n_eval_classes=len(data.target.classes) if stage.data.value == "joint" else None,
        on_epoch=on_epoch,
        lr=cfg.optimizer.lr if stage.on_target else cfg.optimizer.source_lr,
    )
    fit_model.load_state_dict(result.best_state)
    if fit_model is not model:  # cached path: best_state holds the head only
        result.best_state = {
            k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
        }
    mlrun.log_metrics(
        {f"{prefix}/best_val_acc": result.best_val_acc, f"{prefix}/best_epoch": result.best_epoch}
    )
    return result


def _pretrain(p: Prepared, cfg: DictConfig, i: int, stage: Stage, mlrun: Any) -> None:
    """A source stage: trained once per distinct input (transfersweep.reuse), reused after that."""
    if not cfg.trainer.reuse_pretrain:
        _fit_stage(p, cfg, stage, stage.name, cfg.seed + i, mlrun)
        return
    from transfersweep import reuse

    precision = str(p.rt.amp_dtype or "fp32")
    key = reuse.key(cfg, i, precision)
    with reuse.claim(cfg, key) as entry:
        if entry.hit:
            meta = entry.meta()
            p.model.load_state_dict(entry.load())
            p.model.to(p.rt.device)
            log.info(
                "[%s] reused (cache key %s, trained by MLflow run %s)",
                stage.name,
                key,
                meta["run_id"],
            )
            mlrun.set_tags(
                {f"{stage.name}/reused_from": meta["run_id"], f"{stage.name}/cache_key": key}
            )
            mlrun.log_metrics({f"{stage.name}/best_val_acc": meta["best_val_acc"]})
            return
        result = _fit_stage(p, cfg, stage, stage.name, cfg.seed + i, mlrun)
        entry.store(
            result.best_state, {"run_id": mlrun.run_id, "best_val_acc": result.best_val_acc}
        )
        mlrun.set_tags({f"{stage.name}/cache_key": key})


def execute(p: Prepared, cfg: DictConfig, mlrun: Any) -> Outcome:
    """Train the stages (target ones over trainer.repeats seeds), log metrics and the checkpoint."""
    from transfersweep import engine, tracking
    from transfersweep.backbone import classifier_prefixes
    from transfersweep.sweep import trial

    t_start = time.perf_counter()
    data = p.data
    mlrun.log_params(tracking.flatten(cfg))
    sizes = {f"data/target_{k}": v for k, v in data.target.sizes().items()}
    if data.source:
        sizes |= {f"data/source_{k}": v for k, v in data.source.sizes().items()}
    skipped = data.target.skipped_files + (data.source.skipped_files if data.source else 0)
    mlrun.log_metrics(sizes | {"data/skipped_files": skipped})

    first_target = next(i for i, s in enumerate(p.stages) if s.on_target)
    for i, stage in enumerate(p.stages[:first_target]):
        _pretrain(p, cfg, i, stage, mlrun)
    # Repeats restart the target stages from here; heads are fresh in every stage anyway.
    heads = classifier_prefixes(p.model)
    start = (
        {k: v.detach().clone() for k, v in p.model.state_dict().items() if not k.startswith(heads)}
        if cfg.trainer.repeats > 1
        else {}
    )
    n_target = len(data.target.classes)
    pruning = trial.Pruning(cfg)
    vals, tests, best = [], [], None
    for r in range(cfg.trainer.repeats):
        if r > 0:
            p.model.load_state_dict(start, strict=False)
        for i, stage in enumerate(p.stages[first_target:], start=first_target):
            prefix = stage.name if r == 0 else f"{stage.name}_r{r}"
            reports = (
                pruning if r == 0 and i == len(p.stages) - 1 else None
            )  # first seed's final stage
            result = _fit_stage(p, cfg, stage, prefix, cfg.seed + i + 1000 * r, mlrun, reports)
        test_batches = data.eval_batches(p.stages[-1].data, "test", cfg)
        _, test_acc = engine.evaluate(p.model, test_batches, p.prep, p.rt, n_target)
        vals.append(result.best_val_acc)
        tests.append(test_acc)
        mlrun.log_metrics(
            {"repeat/val_acc": result.best_val_acc, "repeat/test_acc": test_acc}, step=r
        )
        if best is None or result.best_val_acc > best[0].best_val_acc:
            best = (result, r)
    std = statistics.stdev if len(vals) > 1 else (lambda _: 0.0)
    out = Outcome(
        statistics.fmean(vals),
        std(vals),
        statistics.fmean(tests),
        std(tests),
        time.perf_counter() - t_start,
    )
    mlrun.log_metrics(
        {
            "val_acc": out.val_acc,
            "val_acc_std": out.val_std,
            "test_acc": out.test_acc,
            "test_acc_std": out.test_std,
            "train_seconds": out.seconds,
        }
    )
    mlrun.log_json(
        {
            "paradigm": paradigm(cfg),
            "backbone": cfg.backbone.name,
            "data": cfg.data.name,
            "val_acc": out.val_acc,
            "val_acc_std": out.val_std,
            "test_acc": out.test_acc,
            "test_acc_std": out.test_std,
            "repeats": {"val_acc": vals, "test_acc": tests},
            "seconds": out.seconds,
        },
        "summary.json",
    )
    if cfg.tracking.log_checkpoint:
        result, r = best
        tracking.save_checkpoint(
            mlrun,
            result.best_state,
            cfg,
            {
                "backbone": cfg.backbone.name,
                "num_classes": data.num_classes(p.stages[-1].data),
                "classes": list(data.target.classes),
                "target_logits": n_target,
                "stage": p.stages[-1].name,
                "repeat": r,
                "best_epoch": result.best_epoch,
                "val_acc": result.best_val_acc,
            },
        )
    return out


def run(cfg: DictConfig) -> float:
    """Run one paradigm; returns the target validation accuracy (mean over repeats): the objective."""
    from transfersweep import tracking
    from transfersweep.memory import memory_guard
    from transfersweep.sweep import trial

    name = cfg.tracking.run_name or paradigm(cfg)
    in_sweep = cfg.tracking.parent_run_id is not None
    tracking.check_server(cfg)  # before minutes of data and model set-up
    # In a sweep the child run opens first, so bad-input trials show up FAILED beside the others.
    early = tracking.start(cfg, name, base_tags(cfg)) if in_sweep else nullcontext()
    with early as mlrun:
        prepared = memory_guard(cfg, "preparing data and model", prepare, cfg)
        with (
            tracking.start(cfg, name, base_tags(cfg))
            if not in_sweep
            else nullcontext(mlrun) as mlrun
        ):
            out = memory_guard(cfg, "training", execute, prepared, cfg, mlrun)
            repeated = cfg.trainer.repeats > 1
            trial.set_attrs(
                cfg,
                {
                    "val_acc": out.val_acc,
                    "val_std": out.val_std if repeated else None,
                    "test_acc": out.test_acc,
                    "test_std": out.test_std if repeated else None,
                    "repeats": cfg.trainer.repeats,
                    "run_id": mlrun.run_id,
                    "paradigm": paradigm(cfg),
                },
            )
    where = f"MLflow run {mlrun.run_id} in {tracking.redact(mlrun.uri)} -> `make ui`, then {mlrun.ui_url()}"
    spread = (
        f" (+-{out.val_std:.4f}, {cfg.trainer.repeats} seeds)" if cfg.trainer.repeats > 1 else ""
    )
    log.info(
        "done: %s | %s on %s | target val_acc %.4f%s  test_acc %.4f | %.0fs | %s",
        paradigm(cfg), cfg.backbone.name, cfg.data.name, out.val_acc, spread, out.test_acc, out.seconds,
        where if cfg.tracking.enabled else "tracking off",
    )  # fmt: skip
    return float(out.val_acc)


def _redact_hydra_record() -> None:
    """Hydra saved this job's config and command line under .hydra/ before we start; a password
    typed into a storage or tracking URL is masked there too (prefer PGPASSWORD / ~/.pgpass)."""
    from hydra.core.hydra_config import HydraConfig

    from transfersweep.tracking import redact

    hc = HydraConfig.get()
    if hc.output_subdir is None:
        return
    for f in (Path(hc.runtime.output_dir) / hc.output_subdir).glob("*.yaml"):
        text = f.read_text()
        masked = redact(text)
        if masked != text:
            f.write_text(masked)


@hydra.main(config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        from transfersweep.sweep.trial import fill_from_hydra

        _redact_hydra_record()
        fill_from_hydra(cfg)
        return run(cfg)
    except TransferSweepError as e:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweeper records the failed trial and goes on
        log.error("error: %s", e)
        sys.exit(2)


def _sigterm_as_interrupt() -> None:
    """SIGTERM (kill, a scheduler's time limit) unwinds like Ctrl-C, so the MLflow run ends KILLED
    and a sweep marks its trial FAIL, instead of both staying RUNNING forever."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, handler)


def cli() -> None:
    _sigterm_as_interrupt()
    main()


if __name__ == "__main__":
    cli()
