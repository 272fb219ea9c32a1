"""Frozen-backbone feature cache: in a phase where a strategy trains only the classifier (the
whole backbone frozen, e.g. freeze=last_layer), the backbone's pooled features
(`forward_head(forward_features(x), pre_logits=True)`, what the classifier sees) are computed
once per split and the head trains on them.

Exactly equivalent to the uncached path when the backbone's output is deterministic: frozen
parts run in eval mode there too, so only random inputs (data.augment) or dropout between
the pooled features and the classifier (backbone.drop_rate) rule the cache out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from transfersweep import freezing
from transfersweep.data import Batches
from transfersweep.data.images import ImageSet


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
