"""Everything a run needs, built and checked before any training: the input checks.

Config ranges, the data (folders, splits, k-shot), the backbone and its weights, and whether
each stage's strategy can apply to the model are all settled here, so a bad value costs
seconds. Heavy imports (torch, timm) happen inside `load`, keeping `--help` and config errors
fast; the hub is probed before timm is imported (see backbone.prepare_hub).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from transfersweep.errors import ConfigError
from transfersweep.regime import Stage
from transfersweep.validation import validate

log = logging.getLogger("transfersweep")


@dataclass
class Inputs:
    stages: list[Stage]
    data: Any  # transfersweep.data.TransferData
    model: Any  # torch.nn.Module (timm)
    layout: Any  # strategies.Layout: the model's blocks and head
    runtime: Any  # engine.Runtime
    preprocess: Any  # data.Preprocess: uint8 batches -> normalised floats on the device
    model_input: Any  # data.ModelInput: size, resize, crop, interpolation, mean/std (timm's)


def load(cfg: DictConfig, parallel_jobs: int = 1) -> Inputs:
    validate(cfg)
    from transfersweep import backbone, regime

    backbone.check_local_weights(cfg)  # a log file or an empty one: one line, in a second
    backbone.prepare_hub(cfg)  # before timm is imported

    import torch

    from transfersweep import data as data_mod
    from transfersweep import engine, freezing

    runtime = engine.Runtime.from_cfg(cfg.trainer, parallel_jobs)
    runtime.apply()
    from transfersweep import cores

    cfg.data.num_workers = cores.loader_workers(cfg.data.num_workers, runtime.threads)
    backbone.check_name(cfg.backbone.name)
    model_input = data_mod.ModelInput.resolve(cfg)  # before the model: a ViT's img_size reads it
    data = data_mod.build(cfg, regime.needs_source(cfg), model_input)
    stages = regime.plan(cfg, data)
    torch.manual_seed(cfg.seed)
    model = backbone.create(cfg, stages[0].num_classes)
    layout = freezing.layout(model, cfg.backbone.name)
    for s in stages:  # an impossible strategy setting fails now, not after pretraining
        if not any(p.epochs > 0 for p in s.strategy.phases(layout, s.epochs)):
            raise ConfigError(
                f"freeze.strategy={s.strategy.name!r} trains no epoch of stage {s.name!r} "
                f"({s.epochs} epochs): give the stage more epochs or check the strategy's keys"
            )
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    runtime.compiled(model)  # trainer.compile: the first step of each stage pays for it
    preprocess = data_mod.Preprocess.of(model_input).to(runtime.device)
    log.info(
        "backbone %s | data %s at %d px (%s, crop %.3g): target %s%s | device %s%s%s",
        cfg.backbone.name,
        cfg.data.name,
        model_input.size,
        model_input.interpolation,
        model_input.crop_pct,
        data.target.sizes(),
        f", source {data.source.sizes()}" if data.source else "",
        runtime.device,
        f" ({runtime.amp_dtype})" if runtime.amp_dtype else "",
        f", {runtime.threads} threads" if runtime.threads else "",
    )
    return Inputs(stages, data, model, layout, runtime, preprocess, model_input)
