"""Structured config schemas: every key in conf/ is declared and typed here.

`conf/train.yaml` puts `train_schema` first in its defaults list, so Hydra
merges every group option into these dataclasses at composition time: an
unknown key or a value of the wrong type fails before anything is imported or
trained (also under `--cfg job`). Checks that types cannot express (ranges,
names that depend on each other) live in `validate()`.

Only dataclasses and OmegaConf here: this module is imported on every start,
so it must stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from transfersweep import scores
from transfersweep.errors import ConfigError


class StageData(str, Enum):
    source = "source"
    target = "target"
    joint = "joint"


@dataclass
class BackboneConfig:
    name: str = MISSING  # any timm model name (optionally with a pretrained tag: resnet18.a1_in1k)
    pretrained: bool = False  # timm hub weights (needs the network or the local hub cache)
    # A local .safetensors/.pth state dict, a packaged file (pkg:<module>/<path glob>), or
    # runs:/<id>/checkpoint/model.safetensors (transfersweep.backbone)
    weights: str | None = None
    key_map: str = "names"  # names | order: the file's tensors in order (another library's names)
    drop_rate: float = 0.0
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs


OOD_SHIFTS = ("rotate", "noise", "blur", "invert")  # data.target.ood (transfersweep.data.shifts)
OOD_SETS = ("digits", "mnist")  # data.target.ood: another embedded set of the same classes


@dataclass
class DatasetConfig:
    kind: str = MISSING  # digits | mnist | imagefolder | torchvision
    root: str | None = None  # imagefolder: folder of class folders; torchvision: data set root
    name: str | None = None  # torchvision: class name in torchvision.datasets (CIFAR10, ...)
    classes: list[Any] | None = None  # subset (and order) of classes; null = all
    k_shot: int | None = None  # at most k training images per class; null = all
    download: bool = False  # torchvision only
    # Target only: score every run on an out-of-distribution test set too (`ood_acc`, reported,
    # never optimised): a shifted copy of the test split (rotate | noise | blur | invert, at
    # ood_severity; data.shifts), another embedded data set's images of the same classes
    # (digits | mnist), or a folder with the same class folders (ood_root).
    ood: str | None = None
    ood_severity: float = 1.0
    ood_root: str | None = None
    # Target only: hold out a shifted *validation* set too (scores ood_val_*, which
    # trainer.objective may name: select on robustness, as AutoFT does), kept apart from the
    # ood test set: with a shift, the shifted copy of the val split; with another set or a
    # folder, half of its images (stratified, seeded by data.split_seed), the other half
    # staying the ood test set.
    ood_val: bool = False
    # An input-level shift of every image of this side (all splits; same shifts and severity
    # scale as `ood`): e.g. data.target.shift=invert makes the target task inverted digits, the
    # setting where BatchNorm adaptation and surgical fine-tuning of early blocks are studied.
    shift: str | None = None
    shift_severity: float = 1.0


@dataclass
class AugmentConfig:
    """timm's train transform (create_transform(is_training=True)) when data.augment=true:
    its defaults, with RandAugment on (data.augment)."""

    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # random-resized-crop area
    ratio: list[float] = field(default_factory=lambda: [0.75, 4 / 3])  # and aspect ratio
    hflip: float = 0.5  # probability of a horizontal flip (0 for digits and text)
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"  # timm's RandAugment spec; null: off
    color_jitter: float = 0.4  # used only when auto_augment is null (timm's rule)


@dataclass
class DataConfig:
    name: str = MISSING
    source: DatasetConfig = field(default_factory=DatasetConfig)
    target: DatasetConfig = field(default_factory=DatasetConfig)
    # The input size; null: the backbone's pretrained one (timm's data config, 224 for most).
    # Images are resized (shorter side to image_size / crop_pct) and centre-cropped once, when
    # decoded; crop_pct and interpolation null: the backbone's (data.model_input).
    image_size: int | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    val_fraction: float = 0.2  # of each class, when the data set has no val split of its own
    test_fraction: float = 0.2  # likewise, for a test split
    split_seed: int = 0  # fixed apart from `seed` so repeats of a trial see the same splits
    augment: bool = False  # timm's train transform (data.aug) on training batches
    aug: AugmentConfig = field(default_factory=AugmentConfig)
    batch_size: int = 64
    num_workers: int = 0  # image decoding processes for data sets read from disk
    joint_target_share: float = 0.5  # share of target images in each joint-training epoch
    memory_budget_mb: int = 2048  # decode once into memory when a split fits, else read per epoch


@dataclass
class StageSpec:
    name: str = MISSING  # metric prefix: pretrain, finetune, joint, target
    data: StageData = MISSING


@dataclass
class RegimeConfig:
    name: str = MISSING
    stages: list[StageSpec] = field(default_factory=list)


@dataclass
class OptimizerConfig:
    name: str = "adamw"  # any timm.optim.create_optimizer_v2 name
    lr: float = 1e-3  # stages that see target data (what sweeps tune)
    # Stages on source data alone: fixed apart from `lr`, so a sweep over `lr` still shares
    # (reuses) one pretraining run instead of pretraining again for every sampled lr.
    source_lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9  # sgd-type optimizers only
    scheduler: str = "cosine"  # cosine | none
    warmup_epochs: int = 0
    # Layer-wise learning-rate decay in stages that see target data (BEiT / MAE recipes): the
    # parameters of timm's fine-grained layer i train at lr x layer_decay^(last - i), the head
    # at lr. 1.0 = off; sweep it with e.g. optimizer.layer_decay=interval(0.5,1.0).
    layer_decay: float = 1.0
    # The fresh classifier's learning rate in stages that see target data, x lr, by phase:
    # `probe_lr_scale` where the head trains alone on frozen features (a linear probe),
    # `head_lr_scale` where blocks train with it. 1.0 = the same lr. adamw_pretrained sets
    # the probe to 10x and keeps the head at 1x, as measured (docs/real-task.md).
    head_lr_scale: float = 1.0
    probe_lr_scale: float = 1.0
    # The sweep's range for lr (log scale; sweep=paradigm / pareto read it): pretrained weights
    # want a lower one than training from scratch (conf/optimizer/adamw_pretrained.yaml).
    lr_range: list[float] = field(default_factory=lambda: [3e-4, 3e-3])


@dataclass
class TrainerConfig:
    source_epochs: int = 15  # stages that train on the source set alone
    target_epochs: int = 40  # stages that see target data (finetune, joint, target)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | fp32 | bf16 | fp16
    channels_last: bool = False
    threads: int | None = None  # torch intra-op threads; null = torch's default
    eval_batch_size: int = 256
    # Run the target stage(s) this many times; the objective is the mean. Repeat r trains on
    # k-shot draw r and seed r (repeat_over=both), or varies only one of them (seed | draw).
    # Repeat r is identical in every trial of a study: paradigms are compared on paired repeats.
    repeats: int = 1
    # What "best" means (transfersweep.scores): the score each stage's best epoch is chosen on,
    # the pruner sees and sweeps rank by: val_acc | val_balanced_acc | val_macro_f1.
    objective: str = "val_acc"
    repeat_over: str = "both"  # both | seed | draw
    first_repeat: int = 0  # index of the first repeat (a sweep's confirmation uses fresh ones)
    feature_cache: bool = (
        True  # head-only phases (freeze=last_layer): train the head on features computed once
    )
    reuse_pretrain: bool = (
        True  # identical source stages run once (cache under <paths.outputs>/cache)
    )
    # Save every epoch under <paths.outputs>/resume; the same command re-run after an
    # interruption continues from the last complete epoch (transfersweep.resume)
    resume: bool = True


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # null: sqlite:///<paths.outputs>/mlflow.db
    experiment: str = "transfersweep"
    artifact_location: str | None = None  # null: <paths.outputs>/mlartifacts (new experiments only)
    run_name: str | None = None  # null: <regime>+<freeze>
    log_checkpoint: bool = True
    parent_run_id: str | None = None  # nest this run under another (sweeps set it)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class TrialConfig:
    """Which Optuna trial this job is: set by the transfersweep sweeper; null in single runs.
    The study's name and storage are read from hydra.sweeper (transfersweep.sweep.trial)."""

    number: int | None = None  # Optuna trial number (what users see)
    id: int | None = None  # the trial's id in the storage


@dataclass
class PrunerConfig:
    """Stops hopeless sweep trials early on their per-epoch target val accuracy (sweeps only)."""

    name: str = "median"  # median | percentile | threshold | hyperband | none
    n_startup_trials: int = 5  # median/percentile: trials that always run to the end first
    n_warmup_steps: int = 10  # epochs of a trial's target stage before it can be pruned
    percentile: float = 25.0  # percentile: prune below this percentile of earlier trials
    threshold: float = 0.0  # threshold: prune while val accuracy is below this


@dataclass
class SearchConfig:
    """What a sweep samples beyond hydra.sweeper.params."""

    # Sweep ranges of a strategy's own keys, sampled only in trials of that strategy; each
    # strategy declares defaults (e.g. last_blocks: n_blocks 1..3). Override as
    # search.freeze.<strategy>.<key>=[low,high] (or a list of choices for a Choice key).
    freeze: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The freeze options a sweep chooses from when neither hydra.sweeper.params nor the
    # command line give `freeze=`: [all] = every conf/freeze option (built-ins in catalogue
    # order, then your own), or names, e.g. [last_layer,last_blocks,full].
    strategies: list[str] = field(default_factory=lambda: ["all"])


@dataclass
class PathsConfig:
    outputs: str = "outputs"


@dataclass
class TrainConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    regime: RegimeConfig = field(default_factory=RegimeConfig)
    # `strategy` (a registered name), optionally `module` (imported first, for your own
    # strategies), then the strategy's own keys, typed and checked by its Params in validate()
    # (transfersweep.strategies). Open to any key at composition, so a sweep over strategies
    # can fix `freeze.n_blocks=2` (it reaches only the trials of strategies that have it); in a
    # run, a key the chosen strategy lacks is a ConfigError naming the strategy's keys.
    # `norm_stats` (every strategy's BatchNorm statistics, strategies/base.py) defaults to
    # `keep` when the backbone starts from pretrained weights (tiny target batches give poor
    # batch statistics: measured in docs/real-task.md) and `frozen` from random init.
    freeze: Any = field(
        default_factory=lambda: DictConfig(
            {
                "strategy": "full",
                "norm_stats": "${ts.norm_stats:${backbone.pretrained},${backbone.weights}}",
            },
            flags={"struct": False},
        )
    )
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    seed: int = 0


def has_source(d: DictConfig) -> bool:
    """Whether the data config names a source set (an image folder needs its root)."""
    return d.source.kind != "imagefolder" or d.source.root is not None


def needs_source(regime: DictConfig) -> bool:
    """Whether a regime trains on the source set in any stage (all but target_only)."""
    return any(StageData(s.data) != StageData.target for s in regime.stages)


def default_norm_stats(pretrained: Any, weights: Any) -> str:
    """freeze.norm_stats when not given: `keep` for a backbone with pretrained weights (hub or
    a file), `frozen` for random init (the resolver ts.norm_stats)."""
    return "keep" if pretrained or weights else "frozen"


def _job_dir(trial_number: Any, job_num: Any) -> str:
    # Trial numbers are unique across all workers of a study; Hydra's job numbers are per worker.
    return f"trial-{trial_number}" if trial_number is not None else str(job_num)


def register_schemas() -> None:
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    if not OmegaConf.has_resolver("ts.job_dir"):
        OmegaConf.register_resolver("ts.job_dir", _job_dir)
    if not OmegaConf.has_resolver("ts.norm_stats"):
        OmegaConf.register_resolver("ts.norm_stats", default_norm_stats)
    if not OmegaConf.has_resolver("ts.study_name"):
        from transfersweep.sweep.identity import default_name

        OmegaConf.register_resolver("ts.study_name", default_name)


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
    from transfersweep import strategies

    strategies.from_config(cfg.freeze)  # a registered strategy, and its own keys and types
