"""Config checks that the schema's types cannot express: ranges, and names that depend on each
other (transfersweep.config declares and types every key). Each failed check is a ConfigError
that names the key, the bad value and the fix, raised before anything is loaded or trained.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from transfersweep import scores
from transfersweep.config import OOD_SETS, OOD_SHIFTS, StageData, has_source, needs_source
from transfersweep.errors import ConfigError


def _check(ok: bool, key: str, value: Any, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {fix}")


AUTO_AUGMENT = ("rand", "augmix", "original", "originalr", "v0", "v0r", "3a")  # timm's policies


def _is_range(pair: Any, top: float) -> bool:
    """[min, max] with 0 < min <= max <= top."""
    return len(pair) == 2 and 0.0 < pair[0] <= pair[1] <= top


def _check_aug(a: DictConfig) -> None:
    """data.aug, checked before anything runs (timm would fail only when the data is built)."""
    _check(
        _is_range(a.scale, top=1.0),
        "data.aug.scale",
        list(a.scale),
        "give [min, max] shares of the image area, 0 < min <= max <= 1 (timm: [0.08, 1.0])",
    )
    _check(
        _is_range(a.ratio, top=float("inf")),
        "data.aug.ratio",
        list(a.ratio),
        "give [min, max] aspect ratios, 0 < min <= max (timm: [0.75, 1.333])",
    )
    _check(0.0 <= a.hflip <= 1.0, "data.aug.hflip", a.hflip, "use a probability in [0, 1]")
    _check(
        a.auto_augment is None or str(a.auto_augment).split("-")[0] in AUTO_AUGMENT,
        "data.aug.auto_augment",
        a.auto_augment,
        "use a timm policy such as rand-m9-mstd0.5-inc1 (RandAugment), augmix-m5-w4-d2, "
        "original or v0, or null for colour jitter only",
    )


def validate(cfg: DictConfig) -> None:
    """Range and consistency checks that the schema's types cannot express."""
    d, t, o = cfg.data, cfg.trainer, cfg.optimizer
    _check(
        cfg.backbone.key_map in ("names", "order"),
        "backbone.key_map",
        cfg.backbone.key_map,
        "choose names (the file's keys are timm's) or order (same architecture, other names)",
    )
    _check(
        d.image_size is None or d.image_size >= 8,
        "data.image_size",
        d.image_size,
        "use at least 8 pixels, or null for the backbone's pretrained input size",
    )
    _check(
        d.crop_pct is None or 0.0 < d.crop_pct <= 1.0,
        "data.crop_pct",
        d.crop_pct,
        "use a fraction in (0, 1] (1.0 keeps the whole image), or null for the backbone's",
    )
    _check(
        d.interpolation in (None, "bilinear", "bicubic", "nearest", "lanczos"),
        "data.interpolation",
        d.interpolation,
        "choose bilinear, bicubic, nearest or lanczos, or null for the backbone's",
    )
    _check(
        d.batch_size >= 2,
        "data.batch_size",
        d.batch_size,
        "use 2 or more (BatchNorm trains on 2+ images)",
    )
    _check(d.num_workers >= 0, "data.num_workers", d.num_workers, "use 0 or more workers")
    if d.augment:
        _check_aug(d.aug)
    for key in ("val_fraction", "test_fraction"):
        v = d[key]
        _check(0.0 < v < 1.0, f"data.{key}", v, "use a fraction strictly between 0 and 1")
    _check(
        d.val_fraction + d.test_fraction < 1.0,
        "data.val_fraction+data.test_fraction",
        d.val_fraction + d.test_fraction,
        "leave some images for training (sum below 1)",
    )
    _check(
        0.0 < d.joint_target_share < 1.0,
        "data.joint_target_share",
        d.joint_target_share,
        "use a share strictly between 0 and 1",
    )
    t_ = d.target
    _check(
        t_.ood is None or t_.ood in OOD_SHIFTS + OOD_SETS,
        "data.target.ood",
        t_.ood,
        f"choose one of {', '.join(OOD_SHIFTS + OOD_SETS)} (or data.target.ood_root=<folder> "
        "for your own)",
    )
    for side in ("source", "target"):
        ds = d[side]
        _check(
            ds.shift is None or ds.shift in OOD_SHIFTS,
            f"data.{side}.shift",
            ds.shift,
            f"choose one of {', '.join(OOD_SHIFTS)}, or null for the images as they are",
        )
        _check(
            ds.shift_severity > 0,
            f"data.{side}.shift_severity",
            ds.shift_severity,
            "use a positive strength",
        )
        _check(
            ds.balance in ("none", "sampler", "loss"),
            f"data.{side}.balance",
            ds.balance,
            "choose none, sampler (every class equally likely in each epoch's draw) or loss "
            "(class-weighted cross-entropy)",
        )
    _check(
        not (t_.ood and t_.ood_root),
        "data.target.ood_root",
        t_.ood_root,
        "give data.target.ood (a shift of the test split) or data.target.ood_root, not both",
    )
    _check(
        t_.ood_severity > 0, "data.target.ood_severity", t_.ood_severity, "use a positive strength"
    )
    _check(
        d.source.ood is None and d.source.ood_root is None,
        "data.source.ood",
        d.source.ood or d.source.ood_root,
        "out-of-distribution scoring is for the target: use data.target.ood",
    )
    for side in ("source", "target"):
        k = d[side].k_shot
        _check(k is None or k >= 1, f"data.{side}.k_shot", k, "use null (all) or at least 1")
    for key in ("source_epochs", "target_epochs"):
        _check(t[key] >= 1, f"trainer.{key}", t[key], "train for at least 1 epoch")
    _check(
        t.precision in ("auto", "fp32", "bf16", "fp16"),
        "trainer.precision",
        t.precision,
        "choose auto, fp32, bf16 or fp16",
    )
    _check(t.threads is None or t.threads >= 1, "trainer.threads", t.threads, "null or >= 1")
    _check(t.repeats >= 1, "trainer.repeats", t.repeats, "use 1 or more repeats")
    _check(
        t.repeat_over in ("both", "seed", "draw"),
        "trainer.repeat_over",
        t.repeat_over,
        "choose both (k-shot draw and seed), seed or draw",
    )
    _check(t.first_repeat >= 0, "trainer.first_repeat", t.first_repeat, "use 0 or more")
    scores.check_objective(t.objective, t_)
    _check(
        not d.source.ood_val,
        "data.source.ood_val",
        d.source.ood_val,
        "a shifted validation set is for the target: use data.target.ood_val",
    )
    _check(o.lr > 0, "optimizer.lr", o.lr, "use a positive learning rate")
    _check(o.source_lr > 0, "optimizer.source_lr", o.source_lr, "use a positive learning rate")
    _check(o.weight_decay >= 0, "optimizer.weight_decay", o.weight_decay, "use 0 or more")
    _check(
        o.scheduler in ("cosine", "none"),
        "optimizer.scheduler",
        o.scheduler,
        "choose cosine or none",
    )
    _check(
        len(o.lr_range) == 2 and 0 < o.lr_range[0] <= o.lr_range[1],
        "optimizer.lr_range",
        list(o.lr_range),
        "give [low,high] with 0 < low <= high",
    )
    for key in ("head_lr_scale", "probe_lr_scale"):
        _check(o[key] > 0, f"optimizer.{key}", o[key], "use a positive factor")
    _check(o.warmup_epochs >= 0, "optimizer.warmup_epochs", o.warmup_epochs, "use 0 or more")
    _check(
        0.0 < o.layer_decay <= 1.0,
        "optimizer.layer_decay",
        o.layer_decay,
        "use a factor in (0, 1]; 1.0 turns layer-wise decay off",
    )
    _check(
        len(cfg.regime.stages) >= 1,
        "regime.stages",
        OmegaConf.to_container(cfg.regime.stages),
        "a regime needs at least one stage; pick one with regime=<name>",
    )
    if needs_source(cfg.regime) and not has_source(d):
        raise ConfigError(
            f"regime={cfg.regime.name} trains on a source set, but data.source.root is not set. "
            "Fix: regime=target_only (your target images alone, from the backbone's weights), or "
            "data.source.root=/path/to/a/larger/related/set (one sub-folder per class)"
        )
    last = cfg.regime.stages[-1]
    _check(
        last.data != StageData.source,
        "regime.stages",
        OmegaConf.to_container(cfg.regime.stages),
        "the last stage must train on target or joint data (the objective is a target metric)",
    )
    _check(
        cfg.pruner.name in ("median", "percentile", "threshold", "hyperband", "none"),
        "pruner.name",
        cfg.pruner.name,
        "choose median, percentile, threshold, hyperband or none",
    )
    from transfersweep import losses, regime, strategies

    strategies.from_config(cfg.freeze)  # a registered strategy, and its own keys and types
    losses.from_config(cfg.loss)
    regime.check(cfg)  # each stage's own epochs, lr, strategy, loss and init
