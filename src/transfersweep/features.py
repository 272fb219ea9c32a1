"""Frozen-backbone feature cache: in a phase where a strategy trains only the classifier (the
whole backbone frozen, e.g. freeze=last_layer), the backbone's pooled features
(`forward_head(forward_features(x), pre_logits=True)`, what the classifier sees) are computed
once per split and the head trains on them.

Exactly equivalent to the uncached path when the backbone's output is deterministic: frozen
parts run in eval mode there too, so only random inputs (data.augment) or dropout between
the pooled features and the classifier (backbone.drop_rate) rule the cache out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

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

    def forward(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        return x


@torch.no_grad()
def extract(model: torch.nn.Module, batches: Batches, prep: torch.nn.Module, runtime) -> FeatureSet:
    """One eval-mode pass of the backbone over `batches` (unshuffled), keeping pooled features."""
    was_training = model.training
    model.eval()
    feats = []
    for x, _ in batches:
        with runtime.autocast():
            f = model.forward_head(
                model.forward_features(prep(runtime.to_device(x))), pre_logits=True
            )
        feats.append(f.float())
    model.train(was_training)
    images = batches.images
    return FeatureSet(torch.cat(feats), images.labels.clone())


def cached_batches(batches: Batches, features: FeatureSet) -> Batches:
    """The same batching (size, seed, joint mixing) over the cached features."""
    out = Batches(
        features,
        batches.batch_size,
        batches.shuffle,
        n_target=batches.n_target,
        target_share=batches.target_share,
    )
    out.gen = batches.gen  # same seeded order as the image batches would have had
    return out
