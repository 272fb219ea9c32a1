"""The training loop: one stage = epochs of (train, validate), keeping the best weights.

Plain PyTorch in the spirit of nanoGPT's loop: no trainer class, no callbacks
beyond `on_epoch`. Metrics are accumulated on the device and read once per
epoch, so the loop does not synchronise with the GPU on every step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from transfersweep import freezing, progress
from transfersweep.data import Batches, Preprocess
from transfersweep.errors import TrainingError
from transfersweep.losses import CrossEntropy

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Where and how tensors run: device, autocast dtype, memory format, CPU threads, and
    torch.compile's backend (None: eager)."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    threads: int | None = None  # torch intra-op threads; None = torch's default
    compile_backend: str | None = None
    parallel_jobs: int | None = None  # set: `threads` is this run's share (cores.py), re-taken
    heap_cache: bool = False  # keep freed CPU memory for the next batch (memory.cache_heap)

    @classmethod
    def from_cfg(cls, t: DictConfig, parallel_jobs: int = 1) -> Runtime:
        """Decide (without applying anything); `parallel_jobs` trials share this machine's cores."""
        if t.device == "auto":
            name = (
                "cuda"
                if torch.cuda.is_available()
                else "mps"
                if torch.backends.mps.is_available()
                else "cpu"
            )
        else:
            name = t.device
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            from transfersweep.errors import ConfigError

            raise ConfigError(
                f"trainer.device={t.device!r} but CUDA is not available: use trainer.device=auto or cpu"
            )
        if device.type == "cuda" and torch.cuda.device_count() > 1:  # one trial per GPU
            from transfersweep import devices

            device = torch.device("cuda", devices.pick(torch.cuda.device_count(), device.index))
        precision = t.precision
        if precision == "auto":
            precision = (
                "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
            )
        amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        from transfersweep import cores

        cores.total(parallel_jobs)  # torch's default read before any run of this process sets it
        threads, shared = t.threads, None
        if threads is None:  # share the cores with the other runs on this machine (cores.py)
            threads, shared = cores.share(parallel_jobs), parallel_jobs
        backend = str(t.compile_backend) if t.compile else None
        return cls(device, amp, bool(t.channels_last), threads, backend, shared, bool(t.heap_cache))

    def apply(self) -> None:
        """Set torch's process-wide switches for this runtime: CPU threads, the C heap kept
        for the next batch; on CUDA, cuDNN's autotuner (fixed input sizes: each layer's fastest
        kernel is found once) and TF32 matmuls and convolutions where fp32 remains (as timm's
        train.py does)."""
        if self.threads:
            torch.set_num_threads(self.threads)
        if self.heap_cache:
            from transfersweep import memory

            memory.cache_heap()
        if self.device.type == "cuda":
            if self.device.index is not None:  # a picked or pinned GPU: its default stream
                torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def rebalance(self) -> None:
        """Between epochs: a run whose threads are its share of the cores takes it again (the
        cores a finished sibling run freed, or half when another one started)."""
        if self.parallel_jobs is None:
            return
        from transfersweep import cores

        threads = cores.share(self.parallel_jobs, starting=False)
        if threads != self.threads:
            log.debug(
                "CPU threads %s -> %d (the runs beside this one changed)", self.threads, threads
            )
            torch.set_num_threads(threads)
            self.threads = threads

    def compiled(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` compiled in place (nn.Module.compile: parameter names and state_dict keys
        unchanged, so checkpoints and the strategies see the plain model), when asked for."""
        if self.compile_backend:
            model.compile(backend=self.compile_backend)
        return model

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    val_score: float  # the objective's metric on val (scores.metric): what picks the best epoch
    lr: float
    images_per_s: float  # training steps only; a compiling first step left out
    seconds: float
    compile_seconds: float = 0.0  # trainer.compile: the stage's first step, which compiles


@dataclass
class FitResult:
    best_val: float = -1.0  # the objective's metric on val at the best epoch
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[EpochStats] = field(default_factory=list)
    best_scores: dict[str, float] | None = None  # every val metric at the best epoch (this fit)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Batches,
    prep: Preprocess,
    runtime: Runtime,
    eval_classes: int | None = None,
) -> tuple[float, dict[str, float]]:
    """Mean loss and every metric of scores.METRICS (by metric name); with `eval_classes`, only
    the first that many logits count (target head of a joint model)."""
    from transfersweep import scores

    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=runtime.device)
    cm: torch.Tensor | None = None
    n = 0
    for x, y in batches:
        x, y = runtime.to_device(x), y.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = model(prep(x))
        logits = logits.float()
        if eval_classes is not None:
            logits = logits[:, :eval_classes]
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        counts = scores.confusion(logits.argmax(1), y, logits.shape[1])
        cm = counts if cm is None else cm + counts
        n += len(y)
    model.train(was_training)
    by_metric = (
        scores.of_confusion(cm.cpu()) if cm is not None else dict.fromkeys(scores.METRICS, 0.0)
    )
    return loss_sum.item() / max(n, 1), by_metric


def layer_decay_scales(model: torch.nn.Module, decay: float) -> dict[str, float]:
    """Learning-rate multiplier per parameter name for layer-wise decay, computed as timm's
    `param_groups_layer_decay` does (fine-grained `group_matcher` layers, the last one at 1)."""
    from timm.models import group_parameters

    layer_of = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    last = max(layer_of.values())
    return {name: decay ** (last - layer) for name, layer in layer_of.items()}


def make_optimizer(
    model: torch.nn.Module,
    o: DictConfig,
    lr: float,
    steps: int,
    warmup_steps: int,
    lr_scales: Mapping[str, float] | None = None,
):
    """timm optimizer over the trainable parameters (no weight decay on biases and norms) and
    a per-step warm-up + cosine schedule. With `lr_scales` (parameter name -> multiplier), each
    parameter group starts at lr x its scale; the schedule multiplies every group alike."""
    from timm.optim import create_optimizer_v2, param_groups_weight_decay

    kwargs = {"momentum": o.momentum} if "sgd" in o.name or "momentum" in o.name else {}
    target: torch.nn.Module | list[dict] = model
    if lr_scales and any(s != 1.0 for s in lr_scales.values()):
        name_of = {id(p): n for n, p in model.named_parameters()}
        skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()  # as timm
        target = []
        for group in param_groups_weight_decay(model, o.weight_decay, no_weight_decay_list=skip):
            by_scale: dict[float, list[torch.nn.Parameter]] = {}
            for p in group["params"]:
                by_scale.setdefault(float(lr_scales.get(name_of[id(p)], 1.0)), []).append(p)
            for scale, params in sorted(by_scale.items(), reverse=True):
                target.append({**group, "params": params, "lr": lr * scale, "lr_scale": scale})
    opt = create_optimizer_v2(target, opt=o.name, lr=lr, weight_decay=o.weight_decay, **kwargs)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if o.scheduler == "none":
            return 1.0
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _is_compiled(model: torch.nn.Module) -> bool:
    """Whether nn.Module.compile was called on `model` (Runtime.compiled)."""
    return getattr(model, "_compiled_call_impl", None) is not None


def _diverged(epoch: int, lr: float, stage_lr: float, o: DictConfig, runtime: Runtime):
    """The error for a non-finite loss, naming the key that set the stage's rate."""
    source = stage_lr == o.source_lr and stage_lr != o.lr  # a source stage's own rate
    key, value = ("optimizer.source_lr", o.source_lr) if source else ("optimizer.lr", o.lr)
    hint = " or use trainer.precision=fp32" if runtime.amp_dtype is not None else ""
    return TrainingError(
        f"non-finite loss at epoch {epoch} (learning rate {lr:.3g} there): lower {key} "
        f"(now {value:g}){hint}"
    )


def fit(
    model: torch.nn.Module,
    train: Batches,
    val: Batches,
    prep: Preprocess,
    runtime: Runtime,
    cfg: DictConfig,
    epochs: int,
    lr: float | None = None,
    eval_classes: int | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    first_epoch: int = 1,
    lr_scales: Mapping[str, float] | None = None,
    frozen_stats: bool = False,
    adapt_stats: bool = False,
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> FitResult:
    """Train `model`'s trainable parameters for `epochs` at `lr` (default optimizer.lr), with
    the optimizer settings of cfg.optimizer; the returned best_state has the best val score on
    the objective's metric (trainer.objective). Epochs are numbered from `first_epoch` (a
    stage's later phases go on counting); with `eval_classes`, only the first that many logits count at evaluation; `frozen_stats`
    keeps every BatchNorm in eval mode; `adapt_stats` (freeze.norm_stats=adapt) puts every
    BatchNorm in training mode instead, frozen ones included, so only its running statistics
    move where its weights are frozen. An interrupted run's saved epoch is put back before the
    loop, and every epoch the loop completes is saved (transfersweep.progress). `loss`
    (logits, labels, the model's input) -> scalar (transfersweep.losses, its teacher bound):
    cross-entropy when None; evaluation's loss is cross-entropy always."""
    from transfersweep import scores

    lr = stage_lr = cfg.optimizer.lr if lr is None else lr
    criterion = loss if loss is not None else CrossEntropy()
    select = scores.metric(cfg.trainer.objective)
    steps = epochs * len(train)
    opt, sched = make_optimizer(
        model, cfg.optimizer, lr, steps, cfg.optimizer.warmup_epochs * len(train), lr_scales
    )
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)
    frozen = freezing.frozen_modules(model)
    adapt = freezing.batch_norms(model) if adapt_stats else []
    if frozen_stats and not adapt:  # every BatchNorm keeps its statistics (Phase.norm_stats)
        frozen += freezing.batch_norms(model)
    result = FitResult()
    done = progress.restore(model, opt, sched, scaler, train.gen, result)  # 0: a fresh start
    compiling = _is_compiled(model)  # its first step compiles: timed apart
    for epoch in range(max(first_epoch, done + 1), first_epoch + epochs):
        runtime.rebalance()
        t0 = time.perf_counter()
        freezing.train_mode(model, frozen, adapt)
        loss_sum = torch.zeros((), device=runtime.device)
        correct = torch.zeros((), device=runtime.device, dtype=torch.long)
        seen, compile_s, compile_n = 0, 0.0, 0
        group = opt.param_groups[0]
        lr = group["lr"] / group.get("lr_scale", 1.0)  # the stage's rate at this step
        for x, y in train:
            if compiling:
                t_step = time.perf_counter()
            x, y = runtime.to_device(x), y.to(runtime.device, non_blocking=True)
            with runtime.autocast():
                inputs = prep(x)
                logits = model(inputs)
                batch_loss = criterion(logits.float(), y, inputs)
            opt.zero_grad(set_to_none=True)
            scaler.scale(batch_loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_sum += batch_loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if compiling:
                batch_loss.item()  # the step has run (a CUDA sync)
                compile_s, compile_n, compiling = time.perf_counter() - t_step, len(y), False
        train_loss = loss_sum.item() / max(seen, 1)
        if not math.isfinite(train_loss):
            raise _diverged(epoch, lr, stage_lr, cfg.optimizer, runtime)
        train_seconds = time.perf_counter() - t0
        if seen > compile_n:  # the other steps' rate (an epoch of one step: counted whole)
            train_seconds, seen_rated = train_seconds - compile_s, seen - compile_n
        else:
            seen_rated = seen
        val_loss, val_scores = evaluate(model, val, prep, runtime, eval_classes)
        stats = EpochStats(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=correct.item() / max(seen, 1),
            val_loss=val_loss,
            val_acc=val_scores["acc"],
            val_score=val_scores[select],
            lr=lr,
            images_per_s=seen_rated / max(train_seconds, 1e-9),
            seconds=time.perf_counter() - t0,
            compile_seconds=compile_s,
        )
        result.history.append(stats)
        if stats.val_score > result.best_val:
            result.best_val, result.best_epoch = stats.val_score, epoch
            result.best_scores = val_scores
            result.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            }
        if on_epoch is not None:
            on_epoch(stats)
        progress.save(epoch, opt, sched, scaler, train.gen, result)
    return result
