"""The train entrypoint: `python -m transfersweep.train [overrides]` (or `transfersweep ...`).

One run = one paradigm (regime x freeze) on one backbone and data set:

    validate config -> load data -> build model (weights) -> check freeze
    -> [MLflow run] for each stage: fresh head, freeze, fit, keep best weights
    -> evaluate target val (the objective) and test (reported only) -> checkpoint

Everything that can be wrong with the user's input is checked before the
MLflow run opens, so a bad value costs seconds and leaves no run behind.
Heavy imports (torch, timm, mlflow) happen inside `run`, keeping `--help`
and config errors fast.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import hydra
from omegaconf import DictConfig

from transfersweep.config import register_schemas, validate
from transfersweep.errors import TransferSweepError

log = logging.getLogger("transfersweep")

register_schemas()


def run(cfg: DictConfig) -> float:
    """Run one paradigm; returns the target validation accuracy (the sweep objective)."""
    validate(cfg)
    from transfersweep import backbone, regime

    stages = regime.plan(cfg)
    backbone.prepare_hub(cfg)  # before timm is imported

    import torch

    from transfersweep import data as data_mod
    from transfersweep import engine, freezing, tracking

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
    pin = rt.device.type == "cuda"
    name = regime.paradigm(cfg)
    tags = {
        "paradigm": name,
        "regime": cfg.regime.name,
        "freeze": regime.paradigm(cfg).split("+", 1)[1],
        "freeze_strategy": str(stages[-1].freeze.value),
        "backbone": cfg.backbone.name,
        "data": cfg.data.name,
        **cfg.tracking.tags,
    }
    n_target = len(data.target.classes)
    skipped = data.target.skipped_files + (data.source.skipped_files if data.source else 0)
    log.info(
        "%s | backbone %s | data %s: target %s%s | device %s%s",
        name,
        cfg.backbone.name,
        cfg.data.name,
        data.target.sizes(),
        f", source {data.source.sizes()}" if data.source else "",
        rt.device,
        f" ({rt.amp_dtype})" if rt.amp_dtype else "",
    )
    t_start = time.perf_counter()
    with tracking.start(cfg, cfg.tracking.run_name or name, tags) as mlrun:
        mlrun.log_params(tracking.flatten(cfg))
        sizes: dict[str, Any] = {f"data/target_{k}": v for k, v in data.target.sizes().items()}
        if data.source:
            sizes |= {f"data/source_{k}": v for k, v in data.source.sizes().items()}
        mlrun.log_metrics(sizes | {"data/skipped_files": skipped})
        result = None
        for i, stage in enumerate(stages):
            model.reset_classifier(
                data.num_classes(stage.data)
            )  # every stage starts from a fresh head
            model.to(rt.device)
            fp = freezing.apply(model, stage.freeze, stage.n_blocks, cfg.backbone.name)
            log.info(
                "[%s] %d epochs on %s data | freeze %s: %s of %s parameters train (%d/%d blocks + head)",
                stage.name,
                stage.epochs,
                stage.data.value,
                fp.strategy.value,
                f"{fp.trainable:,}",
                f"{fp.total:,}",
                fp.n_blocks,
                fp.total_blocks,
            )
            mlrun.log_metrics(
                {
                    f"{stage.name}/params_trainable": fp.trainable,
                    f"{stage.name}/params_total": fp.total,
                }
            )
            n_eval = n_target if stage.data.value == "joint" else None

            def on_epoch(st: engine.EpochStats, stage=stage) -> None:
                log.info(
                    "[%s] epoch %3d/%d  loss %.4f  acc %.3f  val_loss %.4f  val_acc %.3f  lr %.2e  %6.0f img/s  %.1fs",
                    stage.name, st.epoch, stage.epochs, st.train_loss, st.train_acc,
                    st.val_loss, st.val_acc, st.lr, st.images_per_s, st.seconds,
                )  # fmt: skip
                p = stage.name
                mlrun.log_metrics(
                    {
                        f"{p}/train_loss": st.train_loss,
                        f"{p}/train_acc": st.train_acc,
                        f"{p}/val_loss": st.val_loss,
                        f"{p}/val_acc": st.val_acc,
                        f"{p}/lr": st.lr,
                        f"{p}/images_per_s": st.images_per_s,
                    },
                    step=st.epoch,
                )

            result = engine.fit(
                model,
                data.train_batches(stage.data, cfg, seed=cfg.seed + i, pin_memory=pin),
                data.eval_batches(stage.data, "val", cfg, pin_memory=pin),
                prep,
                rt,
                cfg,
                stage.epochs,
                n_eval_classes=n_eval,
                on_epoch=on_epoch,
            )
            model.load_state_dict(result.best_state)
            mlrun.log_metrics(
                {
                    f"{stage.name}/best_val_acc": result.best_val_acc,
                    f"{stage.name}/best_epoch": result.best_epoch,
                }
            )
        assert result is not None
        test_loss, test_acc = engine.evaluate(
            model, data.eval_batches(stages[-1].data, "test", cfg), prep, rt, n_target
        )
        val_acc = result.best_val_acc
        elapsed = time.perf_counter() - t_start
        mlrun.log_metrics(
            {
                "val_acc": val_acc,
                "test_acc": test_acc,
                "test_loss": test_loss,
                "train_seconds": elapsed,
            }
        )
        if cfg.tracking.log_checkpoint:
            tracking.save_checkpoint(
                mlrun,
                result.best_state,
                cfg,
                {
                    "backbone": cfg.backbone.name,
                    "num_classes": data.num_classes(stages[-1].data),
                    "classes": list(data.target.classes),
                    "target_logits": n_target,
                    "stage": stages[-1].name,
                    "best_epoch": result.best_epoch,
                    "val_acc": val_acc,
                },
            )
    where = f"MLflow run {mlrun.run_id} in {tracking.redact(mlrun.uri)} -> `make ui`, then {mlrun.ui_url()}"
    log.info(
        "done: %s | %s on %s | target val_acc %.4f  test_acc %.4f | %.0fs | %s",
        name,
        cfg.backbone.name,
        cfg.data.name,
        val_acc,
        test_acc,
        elapsed,
        where if cfg.tracking.enabled else "tracking off",
    )
    return float(val_acc)


@hydra.main(config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        return run(cfg)
    except TransferSweepError as e:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweeper records the failed trial and goes on
        log.error("error: %s", e)
        sys.exit(2)


def cli() -> None:
    main()


if __name__ == "__main__":
    main()
