"""Cached last_layer trial (10 epochs) vs the uncached one, and vs the floor: one forward
pass of the backbone over the same images (train + val + test).

Targets: cached >= 8x faster than uncached; cached / floor <= 1.3.
"""

from __future__ import annotations

import time

import torch
from common import compose, report

from transfersweep import inputs, train
from transfersweep.data import Batches
from transfersweep.paradigm import Paradigm


def trial_seconds(overrides: list[str]):
    """Seconds of the trial's training and evaluation (data loading and model creation excluded)."""
    from transfersweep.sweep.trial import TrialLink
    from transfersweep.tracking import NoRun

    cfg = compose(overrides)
    ready = inputs.load(cfg)
    return train.train(ready, cfg, Paradigm.from_cfg(cfg), TrialLink(), NoRun()), ready


def floor_seconds(ready, cfg) -> float:
    model, runtime, prep = ready.model, ready.runtime, ready.preprocess
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for split in ("train", "val", "test"):
            for x, _ in Batches(
                getattr(ready.data.target, split), cfg.trainer.eval_batch_size, shuffle=False
            ):
                with runtime.autocast():
                    model.forward_head(
                        model.forward_features(prep(runtime.to_device(x))), pre_logits=True
                    )
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(backbone: str = "resnet18") -> dict[str, float]:
    # All target training images (no k-shot) so the backbone's work dominates, as on real data.
    base = [
        f"backbone={backbone}",
        "regime=target_only",
        "freeze=last_layer",
        "trainer.target_epochs=10",
        "data.target.k_shot=null",
        "tracking.enabled=false",
    ]
    trial_seconds(base)  # warm-up (allocator, kernels)
    cached_run, ready = trial_seconds(base)
    uncached_run, _ = trial_seconds([*base, "trainer.feature_cache=false"])
    cached, uncached = cached_run.seconds, uncached_run.seconds
    floor = floor_seconds(ready, compose(base))
    sizes = ready.data.target.sizes()
    report(
        f"last_layer trial, 10 epochs ({backbone}, target {sizes}): uncached / cached",
        f"{uncached / cached:.1f}x",
        ">= 8x",
        f"{uncached:.2f}s vs {cached:.2f}s",
    )
    report(
        "cached last_layer trial / one backbone forward over its data",
        f"{cached / floor:.2f}",
        "<= 1.3",
        f"floor {floor:.2f}s",
    )
    return {
        "uncached_over_cached": uncached / cached,
        "cached_over_floor": cached / floor,
        "cached_val_acc": cached_run.value,  # the same work both ways: the same accuracy
        "uncached_val_acc": uncached_run.value,
    }


if __name__ == "__main__":
    main()
