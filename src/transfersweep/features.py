"""Frozen-backbone feature cache: in a phase where a strategy trains only the classifier (the
whole backbone frozen, e.g. freeze=last_layer), the backbone's pooled features
(`forward_head(forward_features(x), pre_logits=True)`, what the classifier sees) are computed
once per split and the head trains on them.

Exactly equivalent to the uncached path when the backbone's output is deterministic: frozen
parts run in eval mode there too, so only random inputs (data.augment) or dropout between
the pooled features and the classifier (backbone.drop_rate) rule the cache out.

`for_phase` decides, for one phase of a stage, which cache it trains on: these pooled
features, the output of a frozen prefix of blocks (transfersweep.prefix_cache), or none (and
says why: a tag on the run).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig

from transfersweep import freezing
from transfersweep.data import Batches
from transfersweep.data.images import ImageSet

if TYPE_CHECKING:
    from transfersweep.engine import Runtime
    from transfersweep.inputs import Inputs
    from transfersweep.regime import Stage
    from transfersweep.strategies import Phase

log = logging.getLogger("transfersweep")


def unavailable_reason(cfg: DictConfig, pooled: bool = True) -> str | None:
    """Why the cache cannot be used for a head-only phase (`pooled`) or a frozen prefix of
    blocks (transfersweep.prefix_cache), or None when it can."""
    if not cfg.trainer.feature_cache:
        return "trainer.feature_cache=false"
    if cfg.data.augment:
        return "data.augment=true makes every epoch's training images different"
    if pooled and cfg.backbone.drop_rate > 0:
        return f"backbone.drop_rate={cfg.backbone.drop_rate} drops features at random before the classifier"
    return None


@dataclass
class FeatureSet(ImageSet):
    """Cached features (N, D) on the training device, with their labels; batches like images."""

    features: torch.Tensor
    labels: torch.Tensor

    def subset(self, idx: torch.Tensor) -> FeatureSet:
        return FeatureSet(self.features[idx.to(self.features.device)], self.labels[idx])

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        return self.features[idx.to(self.features.device)]


class NoPrep(torch.nn.Module):
    """Stands in for data.Preprocess when batches are already features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@torch.no_grad()
def extract(
    model: torch.nn.Module,
    batches: Batches,
    prep: torch.nn.Module,
    runtime,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    dtype: torch.dtype | None = torch.float32,
    limit: int | None = None,
) -> FeatureSet:
    """One eval-mode pass over `batches` (unshuffled; the first `limit` images), keeping per
    image what `forward` computes from the preprocessed batch (default: the backbone's pooled
    features, what the classifier sees; transfersweep.prefix_cache passes a frozen prefix),
    in `dtype` (None: as computed). Every module of `model` gets its mode back afterwards."""
    if forward is None:

        def forward(x: torch.Tensor) -> torch.Tensor:
            return model.forward_head(model.forward_features(x), pre_logits=True)

    out, seen = [], 0
    with freezing.modes_kept(model):
        model.eval()
        for x, _ in batches:
            x = x[: limit - seen] if limit is not None else x
            with runtime.autocast():
                f = forward(prep(runtime.to_device(x)))
            out.append(f if dtype is None else f.to(dtype))
            seen += len(x)
            if limit is not None and seen >= limit:
                break
    return FeatureSet(torch.cat(out), batches.images.labels[:seen].clone())


def cached_batches(batches: Batches, features: FeatureSet) -> Batches:
    """The same batching (size, seed, joint mixing) over the cached features."""
    out = Batches(
        features,
        batches.batch_size,
        batches.shuffle,
        n_target=batches.n_target,
        target_share=batches.target_share,
        balanced=batches.balanced,
    )
    out.gen = batches.gen  # same seeded order as the image batches would have had
    return out


def for_phase(
    inputs: Inputs,
    cfg: DictConfig,
    stage: Stage,
    phase: Phase,
    prefix: str,
    train: Batches,
    val: Batches,
    mlrun: Any,
) -> tuple[torch.nn.Module, Any, Batches, Batches]:
    """(model to fit, its preprocessing, train batches, val batches). When the strategy says
    the first blocks stay frozen in this phase, their output is computed once (same batching
    and seeds) and the rest of the model trains on it: the head alone on pooled features when
    the whole backbone is frozen (transfersweep.features), the trainable suffix on the
    activation at the block boundary otherwise (transfersweep.prefix_cache)."""
    layout, model = inputs.layout, inputs.model
    n_frozen = stage.strategy.cached_prefix(layout, phase)
    if n_frozen == 0:
        return model, inputs.preprocess, train, val
    pooled = n_frozen == len(layout.blocks)
    tag = f"{prefix}/feature_cache" + (f"_{phase.name}" if phase.name else "")
    t0 = time.perf_counter()
    why = unavailable_reason(cfg, pooled)
    if why is None and stage.strategy.norm_stats == "adapt" and freezing.batch_norms(model):
        why = "freeze.norm_stats=adapt: BatchNorm statistics in the frozen part move every batch"
    if why is None and stage.loss.uses_teacher:
        why = f"loss {stage.loss.name}: the teacher sees the images"
    cached = None
    if why is None:
        cached = _pooled_cache(inputs, cfg, train, val) if pooled else _block_cache(
            inputs, cfg, n_frozen, train, val
        )  # fmt: skip
        why = cached if isinstance(cached, str) else None
    if why is not None:
        log.info("[%s] feature cache off: %s (the full forward runs every epoch)", prefix, why)
        mlrun.set_tags({tag: f"off: {why}"})
        return model, inputs.preprocess, train, val
    fit_model, train, val, what = cached
    log.info(
        "[%s] feature cache: %s of %d images in %.1fs",
        prefix, what, len(train.images) + len(val.images), time.perf_counter() - t0,
    )  # fmt: skip
    mlrun.set_tags({tag: "on" if pooled else f"on: {what}"})
    return fit_model, NoPrep(), train, val


def scores_whole_model(
    fit_model: torch.nn.Module, model: torch.nn.Module, runtime: Runtime
) -> bool:
    """Whether a fit of `fit_model` scores val as the whole model does, bit for bit (so the
    stage's score needs no second pass over val): the whole model itself, or, without autocast,
    the head on float32 pooled features or the suffix on float32 boundary activations (the
    same eval batches through the same modules)."""
    if fit_model is model:
        return True
    if runtime.amp_dtype is not None:
        return False
    if fit_model is model.get_classifier():
        return True
    from transfersweep import prefix_cache

    return isinstance(fit_model, prefix_cache.Suffix) and fit_model.input_dtype is None


def _unshuffled(train: Batches, cfg: DictConfig) -> Batches:
    return Batches(
        train.images,
        cfg.trainer.eval_batch_size,
        shuffle=False,
        device=train.device,
    )


def _pooled_cache(inputs: Inputs, cfg: DictConfig, train: Batches, val: Batches):
    model, prep, runtime = inputs.model, inputs.preprocess, inputs.runtime
    cached = extract(model, _unshuffled(train, cfg), prep, runtime)
    train = cached_batches(train, cached)
    val = Batches(extract(model, val, prep, runtime), val.batch_size, shuffle=False)
    return model.get_classifier(), train, val, "backbone features"


def _block_cache(inputs: Inputs, cfg: DictConfig, n_frozen: int, train: Batches, val: Batches):
    """The suffix and the batches of boundary activations, or why not (a string)."""
    from transfersweep import prefix_cache

    layout, prep, runtime = inputs.layout, inputs.preprocess, inputs.runtime
    cut = prefix_cache.split(layout, n_frozen)
    if isinstance(cut, str):
        return cut
    model = inputs.model
    probe = extract(model, val, prep, runtime, cut.prefix_eval, dtype=None, limit=1)
    numel, produced = probe.features[0].numel(), probe.features.dtype
    n = len(train.images) + len(val.images)
    budget, need = cfg.data.memory_budget_mb * 2**20, numel * n * produced.itemsize
    dtype = None  # as the prefix produces them
    if need > budget:
        if numel * n * 2 > budget or produced.itemsize <= 2:
            return (
                f"the output of block {n_frozen} takes {need / 2**20:.0f} MB for {n} images, over "
                f"data.memory_budget_mb={cfg.data.memory_budget_mb}"
                + (" (even at float16)" if produced.itemsize > 2 else "")
            )
        dtype, need = torch.float16, numel * n * 2
    unshuffled = _unshuffled(train, cfg)
    cached = extract(model, unshuffled, prep, runtime, cut.prefix_train, dtype)
    val_set = extract(model, val, prep, runtime, cut.prefix_eval, dtype)
    if dtype is not None:
        if not (cached.features.isfinite().all() and val_set.features.isfinite().all()):
            return "the frozen blocks' output overflows float16, and float32 is over the budget"
        cut.suffix.input_dtype = produced
    train = cached_batches(train, cached)
    val = Batches(val_set, val.batch_size, shuffle=False)
    stored = str(cached.features.dtype).removeprefix("torch.")
    what = f"output of block {n_frozen}/{len(layout.blocks)} ({stored}, {need / 2**20:.1f} MB)"
    return cut.suffix, train, val, what
