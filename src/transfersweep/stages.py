"""Stage execution: train one stage, phase by phase, and keep its best weights.

A stage starts from a fresh classifier head and asks its strategy for its phases (what trains
when, at which learning-rate scale). A phase in which the whole backbone is frozen trains the
head on features computed once (transfersweep.features) instead of running the backbone every
epoch. Each phase continues from the best weights of the phase before; the stage ends on its
best validation epoch. Every phase trains on the stage's loss (transfersweep.losses), with
the class weights of data.*.balance=loss; a distilling loss learns from a frozen copy of the
previous stage's result (teacher_after). Source stages run once per distinct input
(transfersweep.reuse).
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from omegaconf import DictConfig

from transfersweep import engine, features, freezing, progress, scores
from transfersweep.inputs import Inputs
from transfersweep.regime import Stage
from transfersweep.repeats import Repeat, RepeatResult
from transfersweep.strategies import Phase

log = logging.getLogger("transfersweep")

Report = Callable[[float, int], None]  # (target val accuracy, epoch): the pruner's feed


def _scales_for(
    fit_model: torch.nn.Module, model: torch.nn.Module, scales: dict[str, float]
) -> dict[str, float]:
    """The strategy's lr scales (by the model's parameter names) under `fit_model`'s names: the
    head alone, when it trains on cached features, names its parameters `weight`, `bias`."""
    if fit_model is model or not scales:
        return scales
    by_id = {id(p): scales[n] for n, p in model.named_parameters() if n in scales}
    return {n: by_id[id(p)] for n, p in fit_model.named_parameters() if id(p) in by_id}


def _selected(cfg: DictConfig) -> str:
    """The score each stage's best epoch is chosen on: the objective's metric on val."""
    return scores.on(cfg.trainer.objective, "val")


@dataclass
class StageResult:
    best_val: float  # the objective's metric (trainer.objective) on val at the best epoch
    best_epoch: int
    best_state: dict[str, torch.Tensor]  # the whole model at its best epoch (CPU copies)
    # every val metric of the whole model at the best epoch, when the fit that found it
    # evaluated exactly that (features.scores_whole_model): `score` then needs no second pass
    # over val; None: scored again
    val_scores: dict[str, float] | None = None


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def run(
    inputs: Inputs,
    cfg: DictConfig,
    stage: Stage,
    prefix: str,
    seed: int,
    mlrun: Any,
    report: Report | None = None,
    teacher: torch.nn.Module | None = None,
) -> StageResult:
    """Train `stage` (metrics under `prefix`) and leave the model at its best epoch (from its
    saved epoch when an interrupted run stands in it: transfersweep.progress); `teacher`: the
    model a distilling loss learns from (see teacher_after)."""
    model, runtime, strategy = inputs.model, inputs.runtime, stage.strategy
    torch.manual_seed(seed)
    model.reset_classifier(stage.num_classes)  # every stage starts from a fresh head
    layout = inputs.layout
    if strategy.attach(layout):  # adapters (LoRA): new parameter names, merged when it ends
        layout = freezing.layout(model, layout.model_name)
    model.to(runtime.device)
    try:
        best = _phases(
            replace(inputs, layout=layout), cfg, stage, prefix, seed, mlrun, report, teacher
        )
    finally:
        strategy.detach(model)  # a plain timm model again, whatever happened
    if layout is not inputs.layout:  # the best state had adapters: keep the merged model's
        best = replace(best, best_state=_cpu_state(model), val_scores=None)  # merging rounds
    mlrun.log_metrics(
        {
            f"{prefix}/best_{_selected(cfg)}": best.best_val,
            f"{prefix}/best_epoch": best.best_epoch,
        }
    )
    return best


def _phases(
    inputs: Inputs,
    cfg: DictConfig,
    stage: Stage,
    prefix: str,
    seed: int,
    mlrun: Any,
    report: Report | None,
    teacher: torch.nn.Module | None,
) -> StageResult:
    """The stage's phases on `inputs.layout` (adapters attached); the model ends at its best.
    A resumed stage skips the phases its saved epoch is past and loads the saved model before
    the feature cache is computed (the frozen part is the same, so the cache is too)."""
    model, data, runtime = inputs.model, inputs.data, inputs.runtime
    phases = [p for p in stage.strategy.phases(inputs.layout, stage.epochs) if p.epochs > 0]
    lr_scales = stage.strategy.lr_scales(inputs.layout)
    decay = cfg.optimizer.layer_decay
    if stage.on_target and decay != 1.0:  # layer-wise lr decay, times the strategy's scales
        by_layer = engine.layer_decay_scales(model, decay)
        lr_scales = {n: lr_scales.get(n, 1.0) * s for n, s in by_layer.items()}

    selected = _selected(cfg)
    loss = functools.partial(stage.loss, teacher=teacher, weight=_class_weights(inputs, cfg, stage))

    def on_epoch(st: engine.EpochStats) -> None:
        log.info(
            "[%s] epoch %3d/%d  loss %.4f  acc %.3f  val_loss %.4f  val_acc %.3f  lr %.2e  %6.0f img/s  %.1fs",
            prefix, st.epoch, stage.epochs, st.train_loss, st.train_acc,
            st.val_loss, st.val_acc, st.lr, st.images_per_s, st.seconds,
        )  # fmt: skip
        metrics = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s")
        values = {f"{prefix}/{m}": getattr(st, m) for m in metrics}
        values[f"{prefix}/params_trainable"] = trainable  # per epoch: gradual unfreezing moves it
        values[f"{prefix}/{selected}"] = st.val_score  # what picks the best epoch
        if st.compile_seconds:
            values[f"{prefix}/compile_s"] = st.compile_seconds
            log.info("[%s] torch.compile: %.1fs (its first step)", prefix, st.compile_seconds)
        mlrun.log_metrics(values, step=st.epoch)
        if report is not None:
            report(st.val_score, st.epoch)  # the objective's metric; may raise TrialPruned

    best: StageResult | None = None
    epoch, trainable = 1, 0
    resume_phase = progress.resumed_phase()
    for i, phase in enumerate(phases):
        if resume_phase is not None and i < resume_phase:
            epoch += phase.epochs
            continue
        if i == resume_phase:
            best = progress.restore_model(model)
            log.info("[%s] resumed in its phase %d", prefix, i + 1)
        plan = freezing.set_trainable(inputs.layout, phase.trains)
        trainable = plan.trainable
        log.info(
            "[%s] %d epochs on %s data | %s%s: %s of %s parameters train (%d/%d blocks + head)%s",
            prefix, phase.epochs, stage.data.value, stage.strategy.label(),
            f" {phase.name}" if phase.name else "", f"{plan.trainable:,}", f"{plan.total:,}",
            plan.n_blocks, plan.total_blocks, _loss_note(stage),
        )  # fmt: skip
        counts = {f"{prefix}/params_total": plan.total}  # params_trainable: every epoch
        if len(phases) > 1:
            counts[f"{prefix}/params_trainable_{phase.name}"] = plan.trainable
        mlrun.log_metrics(counts)
        train = data.train_batches(stage.data, cfg, seed=seed + i, device=runtime.device)
        val = data.eval_batches(stage.data, "val", cfg, device=runtime.device)
        fit_model, fit_prep, train, val = features.for_phase(
            inputs, cfg, stage, phase, prefix, train, val, mlrun
        )
        lr, scales = _rates(lr_scales, cfg, stage, phase, inputs.layout)
        exact = features.scores_whole_model(fit_model, model, runtime)  # score(): no 2nd pass
        with progress.phase(i, model, best):
            result = engine.fit(
                fit_model, train, val, fit_prep, runtime, cfg, phase.epochs,
                lr=lr, eval_classes=stage.eval_classes, on_epoch=on_epoch,
                first_epoch=epoch, lr_scales=_scales_for(fit_model, model, scales),
                frozen_stats=not phase.norm_stats or stage.strategy.norm_stats == "keep",
                adapt_stats=stage.strategy.norm_stats == "adapt", loss=loss,
            )  # fmt: skip
        fit_model.load_state_dict(result.best_state)  # the next phase starts from the best
        best_is_last = best is None or result.best_val > best.best_val
        if best_is_last:
            state = result.best_state if fit_model is model else _cpu_state(model)
            known = result.best_scores if exact else None
            best = StageResult(result.best_val, result.best_epoch, state, known)
        epoch += phase.epochs
    assert best is not None, f"strategy {stage.strategy.name!r} gave no phases"
    if not best_is_last:  # an earlier phase did better: the stage ends on its weights
        model.load_state_dict(best.best_state)
    return best


def _class_weights(inputs: Inputs, cfg: DictConfig, stage: Stage) -> torch.Tensor | None:
    """The cross-entropy's class weights when the stage's side says data.*.balance=loss (on
    the training device), else None; a joint stage keeps its own mixing (data.joint_target_share)."""
    from transfersweep.config import StageData
    from transfersweep.data.batches import class_weights

    if stage.data == StageData.joint:
        return None
    splits, side = inputs.data.side(stage.data, cfg.data)
    if side.balance != "loss":
        return None
    return class_weights(splits.train.labels, stage.num_classes).to(inputs.runtime.device)


def _loss_note(stage: Stage) -> str:
    """' | loss distill (T=2.0, weight=0.5, teacher previous)', or '' for plain cross-entropy."""
    keys = {k: v for k, v in stage.loss.to_dict().items() if k != "name" and v}
    if stage.loss.name == "ce" and not keys:
        return ""
    return f" | loss {stage.loss.name} ({', '.join(f'{k} {v}' for k, v in keys.items())})"


def _rates(
    lr_scales: dict[str, float], cfg: DictConfig, stage: Stage, phase: Phase, layout: Any
) -> tuple[float, dict[str, float]]:
    """The phase's learning rate (the stage's, x the strategy's Phase.lr_scale when it sets one)
    and `lr_scales` with the fresh classifier's factor for this phase of a target stage:
    `optimizer.probe_lr_scale` when what the head sees is frozen (the last block does not
    train: the head alone, or beside an early block as in surgical) unless the strategy set the
    phase's rate itself (lp_ft's probe), `optimizer.head_lr_scale` when the last block trains
    with it. Measured on the real task with pretrained lite0, 5 paired repeats
    (docs/real-task.md): the probe alone is +0.19 val at x10, surgical2 +0.20 (0.680 against
    0.477), full fine-tuning +0.04 at x1: one factor cannot serve them all."""
    lr = stage.lr * (1.0 if phase.lr_scale is None else phase.lr_scale)
    head = set(layout.head)
    below = set(layout.blocks[-1]) if layout.blocks else set()
    if not phase.trains & below:  # the head's input is frozen: it trains as a probe does
        factor = cfg.optimizer.probe_lr_scale if phase.lr_scale is None else 1.0
    else:
        factor = cfg.optimizer.head_lr_scale
    if not stage.on_target or factor == 1.0:
        return lr, lr_scales
    return lr, dict(lr_scales) | {n: lr_scales.get(n, 1.0) * factor for n in head}


def target_stages(inputs: Inputs) -> list[Stage]:
    """The stages from the first that sees target data: they run once per repeat."""
    first_target = next(i for i, s in enumerate(inputs.stages) if s.on_target)
    return inputs.stages[first_target:]


def pretrain(inputs: Inputs, cfg: DictConfig, mlrun: Any) -> list[Stage]:
    """Run the source stages before the first target stage (each once per distinct input,
    reused across runs); returns the stages that remain: the target ones, which repeat. An
    interrupted run skips the source stages its saved state is past (their result is in the
    saved model) and continues the one it stands in (transfersweep.progress)."""
    remaining = target_stages(inputs)
    if progress.past_source():
        return remaining  # the repeats start from the saved start (progress.start)
    resumed_in = progress.resumed_in(None)
    replay = _replays(inputs, resumed_in)
    teacher = None
    for i, stage in enumerate(inputs.stages[: len(inputs.stages) - len(remaining)]):
        before = resumed_in is not None and i < resumed_in
        if before and not replay:
            continue
        with progress.stage(i, None, save=not before):  # trained again for the teacher: no saving
            _pretrain_stage(inputs, cfg, i, stage, mlrun, teacher)
        teacher = teacher_after(inputs, i)
    return remaining


def _replays(inputs: Inputs, resumed_in: int | None) -> bool:
    """Whether a run resumed in stage `resumed_in` trains the stages before it again: its
    teacher (the previous stage's result) is not in the saved state, and training them again
    from the same start gives it back exactly."""
    return resumed_in is not None and inputs.stages[resumed_in].loss.uses_teacher


def teacher_after(inputs: Inputs, i: int) -> torch.nn.Module | None:
    """A frozen copy of the model as stage `i` left it (best epoch, head included), when the
    next stage distils from it (losses.Distill); None otherwise."""
    after = inputs.stages[i + 1] if i + 1 < len(inputs.stages) else None
    if after is None or not after.loss.uses_teacher:
        return None
    teacher = copy.deepcopy(inputs.model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
        p.grad = None
    return teacher


def _pretrain_stage(
    inputs: Inputs, cfg: DictConfig, i: int, stage: Stage, mlrun: Any, teacher: Any
) -> None:
    train = functools.partial(
        run, inputs, cfg, stage, stage.name, cfg.seed + i, mlrun, None, teacher
    )
    if not cfg.trainer.reuse_pretrain:
        train()
        return
    from transfersweep import reuse

    model, runtime = inputs.model, inputs.runtime
    key = reuse.key(cfg, i, str(runtime.amp_dtype or "fp32"))
    with reuse.claim(cfg, key) as entry:
        if entry.hit:
            meta = entry.meta()
            model.load_state_dict(entry.load())
            model.to(runtime.device)
            log.info(
                "[%s] reused (cache key %s, trained by MLflow run %s)",
                stage.name, key, meta["run_id"],
            )  # fmt: skip
            mlrun.set_tags(
                {f"{stage.name}/reused_from": meta["run_id"], f"{stage.name}/cache_key": key}
            )
            mlrun.log_metrics({f"{stage.name}/best_{_selected(cfg)}": meta["best_val"]})
            return
        result = train()
        entry.store(result.best_state, {"run_id": mlrun.run_id, "best_val": result.best_val})
        mlrun.set_tags({f"{stage.name}/cache_key": key})


def snapshot(inputs: Inputs) -> dict[str, torch.Tensor]:
    """The model after the source stages, without its head (every stage makes a fresh one):
    each repeat of the target stages starts from it."""
    from transfersweep.backbone import classifier_prefixes

    heads = classifier_prefixes(inputs.model)
    return {
        k: v.detach().clone()
        for k, v in inputs.model.state_dict().items()
        if not k.startswith(heads)
    }


def restore(inputs: Inputs, start: dict[str, torch.Tensor]) -> None:
    inputs.model.load_state_dict(start, strict=False)


def repeat(
    inputs: Inputs,
    cfg: DictConfig,
    target_stages: list[Stage],
    rep: Repeat,
    mlrun: Any,
    report: Report | None = None,
    start: dict[str, torch.Tensor] | None = None,
) -> RepeatResult:
    """The target stages on repeat `rep`'s k-shot draw and seed, scored on the fixed val and
    test splits; `report` feeds the pruner from the last stage. `start`: the weights the target
    stages start from (snapshot), for a stage with `init: start`. An interrupted run skips the
    stages its saved state is past (their result is in the saved model)."""
    t0 = time.perf_counter()
    inputs = replace(inputs, data=inputs.data.drawn(rep.draw))
    first = len(inputs.stages) - len(target_stages)
    resumed_in = progress.resumed_in(rep.index)
    replay = _replays(inputs, resumed_in)
    if replay and start is not None:
        restore(inputs, start)  # the stages before the resumed one train again from the start
    teacher = None
    for i, stage in enumerate(target_stages, start=first):
        before = resumed_in is not None and i < resumed_in
        if before and not replay:
            continue
        if stage.init == "start" and i > first:
            assert start is not None, "train keeps the start when a stage restarts from it"
            restore(inputs, start)
            log.info("[%s] starts from the weights the target stages started from", stage.name)
        prefix = stage.name if rep.index == 0 else f"{stage.name}_r{rep.index}"
        last = stage is target_stages[-1]
        seed = cfg.seed + i + 1000 * rep.seed
        with progress.stage(i, rep.index, save=not before):  # again for the teacher: no saving
            result = run(inputs, cfg, stage, prefix, seed, mlrun, report if last else None, teacher)
        teacher = teacher_after(inputs, i)
    scored = score(inputs, cfg, target_stages[-1], result.val_scores)
    mlrun.log_metrics({f"repeat/{k}": v for k, v in scored.items()}, step=rep.index)
    seconds = time.perf_counter() - t0
    return RepeatResult(rep.index, inputs.data.target.digest(), seconds, scored, result)


def needs_start(stages: list[Stage], n_repeats: int) -> bool:
    """Whether the run keeps the weights the target stages start from (snapshot): several
    repeats start from them, a stage restarts from them (`init: start`), or a distilling stage
    may train the stages before it again on resume (teacher_after)."""
    return n_repeats > 1 or any(s.init == "start" or s.loss.uses_teacher for s in stages)


def score(
    inputs: Inputs, cfg: DictConfig, final: Stage, val: dict[str, float] | None = None
) -> dict[str, float]:
    """Every score of the model as it stands (the last stage's best epoch) by name
    (transfersweep.scores): every metric on the target's val and test splits, on the
    out-of-distribution set when data.target.ood is set (reported, never optimised) and on the
    held-out shifted validation set (data.target.ood_val). Val is scored again on the whole
    model, which is what the checkpoint and the champion are, unless `val` holds its metrics
    already (StageResult.val_scores: the same numbers, bit for bit)."""
    target = inputs.data.target
    out: dict[str, float] = scores.named("val", val) if val is not None else {}
    for split in scores.SPLITS:
        if split in ("ood", "ood_val") and getattr(target, split) is None:
            continue
        if split == "val" and val is not None:
            continue
        batches = inputs.data.eval_batches(final.data, split, cfg, device=inputs.runtime.device)
        _, by_metric = engine.evaluate(
            inputs.model, batches, inputs.preprocess, inputs.runtime, len(target.classes)
        )
        out |= scores.named(split, by_metric)
    return out
