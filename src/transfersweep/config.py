"""Structured config schemas: every key in conf/ is declared and typed here.

`conf/train.yaml` puts `train_schema` first in its defaults list, so Hydra
merges every group option into these dataclasses at composition time: an
unknown key or a value of the wrong type fails before anything is imported or
trained (also under `--cfg job`). Checks that types cannot express (ranges,
names that depend on each other) live in transfersweep.validation.

Only dataclasses and OmegaConf here: this module is imported on every start,
so it must stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING, DictConfig


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
    # Imbalanced classes, in the stages that train on this side alone (a joint stage keeps its
    # own mixing): none | sampler (each epoch draws its images with replacement, every class
    # equally likely) | loss (cross-entropy weighted by n / (classes x count), scikit-learn's
    # "balanced"). Pair it with trainer.objective=val_balanced_acc or val_macro_f1.
    balance: str = "none"


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
    """One stage of a regime. Beyond name and data, every key is optional: unset, the stage
    gets the defaults of its data kind (transfersweep.regime)."""

    name: str = MISSING  # metric prefix: pretrain, finetune, joint, target
    data: StageData = MISSING
    epochs: int | None = None  # null: trainer.source_epochs (source) / target_epochs (others)
    lr: float | None = None  # null: optimizer.source_lr (source) / optimizer.lr (others)
    lr_scale: float = 1.0  # x the stage's lr: a rate relative to the one a sweep tunes
    freeze: Any = None  # a strategy for this stage ({strategy: last_layer, ...}); null: by kind
    loss: Any = None  # {name: ce | distill, ...} (transfersweep.losses); null: by kind
    init: str = "previous"  # previous: the weights the stage before left | start: see regime.py


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
    # `probe_lr_scale` where what the head sees is frozen (the last block does not train: a
    # linear probe, surgical), `head_lr_scale` where the last block trains with it. 1.0 = the
    # same lr. adamw_pretrained sets
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
    # torch.compile the model (in place) with this backend; the compile time is logged apart
    # (<stage>/compile_s) and left out of images/s. Off by default: on short trials the
    # compile costs more than it saves (bench/README.md)
    compile: bool = False
    compile_backend: str = "inductor"
    # torch intra-op threads; null: torch's default, split between the transfersweep runs
    # training on this machine when the run starts (transfersweep.cores)
    threads: int | None = None
    # Keep freed CPU memory (blocks up to 32 MB) for the next batch instead of faulting in
    # fresh pages every step; handed back when the run ends. false: glibc's defaults
    # (transfersweep.memory.cache_heap; huge pages for larger blocks: TRANSFERSWEEP_HUGE_PAGES)
    heap_cache: bool = True
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
    # Save the run's state under <paths.outputs>/resume; the same command re-run after an
    # interruption continues from the last saved epoch (transfersweep.resume)
    resume: bool = True
    # ... after an epoch, once this many seconds of training passed since the last save (or
    # the start); 0: every epoch. A kill loses at most about that much training, and short
    # epochs (small targets, GPUs) do not pay a state write each: measured in bench/
    resume_every_s: float = 30.0


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
    # The search.backbones entry this trial trains (a sweep over several backbones): the
    # paradigm's name starts with it (lite0/target_only+full)
    backbone: str | None = None


@dataclass
class PrunerConfig:
    """Stops hopeless sweep trials early on their per-epoch target val accuracy (sweeps only)."""

    name: str = "median"  # median | percentile | threshold | hyperband | none
    n_startup_trials: int = 5  # median/percentile: trials that always run to the end first
    n_warmup_steps: int = 10  # epochs of a trial's target stage before it can be pruned
    percentile: float = 25.0  # percentile: prune below this percentile of earlier trials
    threshold: float = 0.0  # threshold: prune while val accuracy is below this


@dataclass
class PrerankConfig:
    """The ranking of search.backbones before any training (transfersweep.sweep.prerank): scores
    of each backbone's frozen pooled features of the target training images."""

    enabled: bool = True  # with two or more backbones
    score: str = "knn"  # what orders the search and `keep`: knn (leave-one-out) | logme
    keep: int = 0  # train only the top `keep` backbones (0: all)
    k: int = 5  # the kNN's neighbours (cosine, majority vote)
    max_images: int = 2000  # at most this many training images (every n-th beyond)


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
    # The backbones a sweep chooses from: presets of conf/backbone or timm names (with timm's
    # hub weights, as backbone=timm). []: the one backbone= names (no backbone dimension).
    backbones: list[str] = field(default_factory=list)
    prerank: PrerankConfig = field(default_factory=PrerankConfig)


@dataclass
class PathsConfig:
    outputs: str = "outputs"


@dataclass
class TrainConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    regime: RegimeConfig = field(default_factory=RegimeConfig)
    # `strategy` (a registered name), optionally `module` (imported first, for your own
    # strategies), then the strategy's own keys, typed and checked by its Params in validation.validate()
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
    # The loss of every stage that sees target data unless the stage sets its own: `name` (ce |
    # distill, transfersweep.losses) and its keys; stages on source data alone train on plain
    # cross-entropy (the loss is a target-side choice, like the strategy and lr).
    loss: Any = field(
        default_factory=lambda: DictConfig(
            {"name": "ce", "label_smoothing": 0.0}, flags={"struct": False}
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
