"""data.augment: timm's train transform on the cached uint8 training batches, reproducible from
the batches' own generator (so resume augments as an uninterrupted run would)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import FAST, compose


def _augment(**aug):
    from transfersweep.config import AugmentConfig
    from transfersweep.data import ModelInput
    from transfersweep.data.augment import TrainAugment

    mi = ModelInput(24, "bilinear", 1.0, "center", (0.5,) * 3, (0.5,) * 3)
    return mi, TrainAugment(mi, OmegaConf.merge(OmegaConf.structured(AugmentConfig), aug))


def _images(n: int = 6, size: int = 24) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)


def test_it_is_timms_train_transform_seeded_per_batch_and_leaves_global_rngs_alone():
    from PIL import Image
    from timm.data import create_transform

    mi, aug = _augment(scale=[0.3, 1.0])
    x = _images()
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    out = aug(x, seed=7)
    assert (random.getstate(), torch.get_rng_state().tolist()) == (before[0], before[2].tolist())
    assert np.array_equal(np.random.get_state()[1], before[1])
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert not torch.equal(out, x)
    assert torch.equal(aug(x, seed=7), out) and not torch.equal(aug(x, seed=8), out)

    # the same pixels as timm's own train transform (RandomResizedCrop, flip, RandAugment)
    primary, secondary, _ = create_transform(
        (3, 24, 24), is_training=True, scale=(0.3, 1.0), auto_augment="rand-m9-mstd0.5-inc1",
        interpolation="bilinear", mean=mi.mean, std=mi.std, separate=True,
    )  # fmt: skip
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    hwc = x.permute(0, 2, 3, 1).numpy()
    for i in range(len(x)):
        timm_img = np.asarray(secondary(primary(Image.fromarray(hwc[i]))))
        assert np.array_equal(timm_img, out[i].permute(1, 2, 0).numpy())


@pytest.mark.parametrize("policy", ["rand-m9-mstd0.5-inc1", "rand-m9-mstd0.5"])
def test_posterize_to_zero_bits_gives_a_black_image_instead_of_stopping_the_run(policy):
    """timm's posterize level can reach 0 bits, which Pillow 11+ refuses (seen mid-run)."""
    from PIL import Image

    _, aug = _augment(auto_augment=policy)
    (policy_t,) = [t for t in aug.transform.transforms if hasattr(t, "ops") or hasattr(t, "policy")]
    ops = getattr(policy_t, "ops", None) or [op for sub in policy_t.policy for op in sub]
    op = next(op for op in ops if "Posterize" in op.name)
    op.prob, op.magnitude_std = 1.0, 0.0
    op.magnitude = 10.0 if "Increasing" in op.name else 0.0  # the level that keeps 0 bits
    assert op.level_fn(op.magnitude, op.hparams) == (0,)
    out = np.asarray(op(Image.fromarray(_images(1)[0].permute(1, 2, 0).numpy())))
    assert out.shape == (24, 24, 3) and not out.any()


def test_an_epoch_resumed_from_the_generator_state_augments_identically():
    from transfersweep.data import Batches
    from transfersweep.data.images import TensorImages

    _, aug = _augment()
    images = TensorImages(_images(10), torch.arange(10) % 2)
    a = Batches(images, batch_size=4, shuffle=True, seed=3, augment=aug)
    list(a)  # epoch 1
    state = a.gen.get_state()
    epoch2 = [x for x, _ in a]
    b = Batches(images, batch_size=4, shuffle=True, seed=99, augment=aug)
    b.gen.set_state(state)  # what resume restores
    assert all(torch.equal(x, y) for x, y in zip(epoch2, (x for x, _ in b), strict=True))


def test_augmented_run_trains_and_keys_pretrain_reuse_on_the_settings(outputs):
    from transfersweep import reuse, train

    cfg = compose([*FAST, "regime=target_only", "freeze=full", "data.augment=true"], outputs)
    assert 0.0 <= train.run(cfg) <= 1.0

    base = compose([*FAST, "data.augment=true"], outputs)
    other = compose([*FAST, "data.augment=true", "data.aug.hflip=0.25"], outputs)
    plain = compose([*FAST], outputs)
    plain_other = compose([*FAST, "data.aug.hflip=0.25"], outputs)  # aug unused: same key
    keys = [reuse.key(c, 0, "fp32") for c in (base, other, plain, plain_other)]
    assert keys[0] != keys[1] and keys[0] != keys[2] and keys[2] == keys[3]


@pytest.mark.parametrize(
    ("override", "bad"),
    [
        ("data.aug.scale=[0.5]", "data.aug.scale=[0.5]"),
        ("data.aug.scale=[0.9,0.2]", "data.aug.scale=[0.9, 0.2]"),
        ("data.aug.hflip=2", "data.aug.hflip=2"),
        ("data.aug.auto_augment=randaug", "data.aug.auto_augment='randaug'"),
    ],
)
def test_bad_augment_settings_are_named_before_anything_runs(outputs, override, bad):
    from transfersweep.errors import ConfigError
    from transfersweep.validation import validate

    cfg = compose([*FAST, "data.augment=true", override], outputs)
    with pytest.raises(ConfigError, match=bad.replace("[", r"\[").replace("]", r"\]")):
        validate(cfg)
