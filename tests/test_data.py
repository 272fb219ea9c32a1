"""Data: seeded reproducible splits, k-shot, image folders, and clear errors for bad data."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import compose
from transfersweep import data as data_mod
from transfersweep.config import StageData
from transfersweep.data.images import TensorImages
from transfersweep.errors import DataError


def _images_key(part: TensorImages) -> set[bytes]:
    return {img.numpy().tobytes() for img in part.images}


def test_digits_splits_are_seeded_disjoint_and_k_shot():
    cfg = compose(["data.image_size=16"])
    a = data_mod.build(cfg, need_source=True)
    b = data_mod.build(cfg, need_source=True)
    t = a.target
    assert t.classes == ["5", "6", "7", "8", "9"] and a.source.classes == ["0", "1", "2", "3", "4"]
    assert torch.bincount(t.train.labels).tolist() == [5] * 5  # k_shot=5 per class
    assert torch.equal(t.train.images, b.target.train.images)  # reproducible
    assert torch.equal(t.val.images, b.target.val.images)
    tr, va, te = _images_key(t.train), _images_key(t.val), _images_key(t.test)
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert t.train.images.dtype == torch.uint8 and t.train.images.shape[1:] == (3, 16, 16)
    other = data_mod.build(compose(["data.image_size=16", "data.split_seed=1"]), need_source=False)
    assert not torch.equal(other.target.train.images, t.train.images)


def test_k_shot_draws_are_reproducible_fresh_and_leave_val_test_alone():
    cfg = compose(["data.image_size=16"])
    a = data_mod.build(cfg, need_source=False).target
    b = data_mod.build(cfg, need_source=False).target  # as in another trial or process
    assert a.draw(0) is a  # draw 0 is the split's own k-shot images
    draws = [a.draw(d) for d in range(4)]
    assert len({d.digest() for d in draws}) == 4  # each repeat its own images
    for d in range(4):
        assert torch.equal(draws[d].index, b.draw(d).index)  # same draw in every trial
        assert torch.equal(draws[d].train.images, b.draw(d).train.images)
        assert torch.bincount(draws[d].train.labels).tolist() == [5] * 5
        assert draws[d].val is a.val and draws[d].test is a.test
        tr = _images_key(draws[d].train)
        assert not (tr & _images_key(a.val)) and not (tr & _images_key(a.test))
    assert a.draw(2).draw(0).digest() == a.digest()
    whole = data_mod.build(compose(["data.image_size=16", "data.target.k_shot=null"]), False)
    assert whole.target.draw(3) is whole.target  # no k-shot limit: nothing to redraw


def test_joint_batches_mix_target_and_source_in_union_label_space():
    cfg = compose(["data.image_size=16", "data.batch_size=32"])
    d = data_mod.build(cfg, need_source=True)
    batches = d.train_batches(StageData.joint, cfg, seed=0)
    assert d.num_classes(StageData.joint) == 10
    labels = torch.cat([y for _, y in batches])
    assert len(labels) >= len(d.source.train)  # an epoch covers the union
    target_share = (labels < 5).float().mean().item()
    assert 0.45 < target_share < 0.55  # data.joint_target_share=0.5
    assert labels.max() == 9


def test_image_folder_with_own_splits_and_auto_splits(image_folder):
    root = image_folder("split_src", {"a": 6, "b": 6, "c": 6})
    cfg = compose(
        [
            "data=imagefolder",
            "data.image_size=16",
            f"data.target.root={root}",
            "data.target.k_shot=2",
            "data.num_workers=0",
        ]
    )
    d = data_mod.build(cfg, need_source=False)
    assert d.target.classes == ["a", "b", "c"]
    assert torch.bincount(d.target.train.labels).tolist() == [2, 2, 2]
    assert len(d.target.val) == 3 and len(d.target.test) == 3  # 20% of 6 -> 1 per class each

    pre = image_folder("presplit", {"x": 4, "y": 4}).parent / "presplit_root"
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        image_folder(f"presplit_root/{split}", {"x": n, "y": n})
    cfg = compose(
        ["data=imagefolder", "data.image_size=16", f"data.target.root={pre}", "data.num_workers=0"]
    )
    d = data_mod.build(cfg, need_source=False)
    assert d.target.sizes() == {"train": 8, "val": 4, "test": 6}


def test_unreadable_images_are_skipped_and_counted(image_folder):
    root = image_folder("broken", {"a": 5, "b": 5})
    (root / "a" / "bad.png").write_bytes(b"not an image")
    (root / "b" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 nope")
    cfg = compose(
        ["data=imagefolder", "data.image_size=16", f"data.target.root={root}", "data.num_workers=0"]
    )
    d = data_mod.build(cfg, need_source=False)
    assert d.target.skipped_files == 2
    assert sum(d.target.sizes().values()) == 10


def test_lazy_loading_when_over_the_memory_budget(image_folder):
    from transfersweep.data.images import FileImages

    root = image_folder("lazy", {"a": 5, "b": 5})
    base = ["data=imagefolder", "data.image_size=16", f"data.target.root={root}",
            "data.num_workers=0"]  # fmt: skip
    cfg = compose([*base, "data.memory_budget_mb=0"])
    d = data_mod.build(cfg, need_source=False)
    for split in ("train", "val", "test"):  # read per batch from disk, not decoded up front
        assert isinstance(getattr(d.target, split), FileImages), split
    x, y = next(iter(d.train_batches(StageData.target, cfg, seed=0)))
    assert x.dtype == torch.uint8 and x.shape[1:] == (3, 16, 16) and len(x) == len(y)
    eager_cfg = compose([*base, "data.memory_budget_mb=64"])
    eager = data_mod.build(eager_cfg, need_source=False)
    assert isinstance(eager.target.train, TensorImages)  # within the budget: in memory
    ex, ey = next(iter(eager.train_batches(StageData.target, eager_cfg, seed=0)))
    assert torch.equal(x, ex) and torch.equal(y, ey)  # the same pixels either way


@pytest.mark.parametrize(
    "setup,match",
    [
        ("missing", r"data\.target\.root='.*nowhere' does not exist"),
        ("unset", r"data\.target\.root is not set"),
        ("empty", r"has no class sub-folders \(it is empty\)"),
        ("flat", r"holds images directly"),
        ("one_class", r"has 1 class \(only\).*at least 2"),
        ("empty_class", r"class folder 'b' holds no images"),
        ("k_shot", r"data\.target\.k_shot=50 but class 'a' has only 3 training image"),
        ("classes", r"data\.target\.classes names 'zebra'"),
    ],
)
def test_bad_data_gives_a_clear_error(tmp_path, image_folder, setup, match):
    overrides = ["data=imagefolder", "data.image_size=16", "data.num_workers=0"]
    if setup == "missing":
        overrides.append(f"data.target.root={tmp_path / 'nowhere'}")
    elif setup == "empty":
        (tmp_path / "empty").mkdir()
        overrides.append(f"data.target.root={tmp_path / 'empty'}")
    elif setup == "flat":
        root = image_folder("flat_src", {"a": 2})
        overrides.append(f"data.target.root={root / 'a'}")
    elif setup == "one_class":
        overrides.append(f"data.target.root={image_folder('one', {'only': 5})}")
    elif setup == "empty_class":
        root = image_folder("ec", {"a": 5})
        (root / "b").mkdir()
        overrides.append(f"data.target.root={root}")
    elif setup == "k_shot":
        overrides += [
            f"data.target.root={image_folder('ks', {'a': 5, 'b': 9})}",
            "data.target.k_shot=50",
        ]
    elif setup == "classes":
        overrides += [
            f"data.target.root={image_folder('cl', {'a': 5, 'b': 5})}",
            "data.target.classes=[a,zebra]",
        ]
    with pytest.raises(DataError, match=match):
        data_mod.build(compose(overrides), need_source=False)


def test_torchvision_dataset_missing_offline_is_clear(tmp_path):
    cfg = compose(["data=cifar10", f"data.source.root={tmp_path}"])
    with pytest.raises(DataError, match=r"CIFAR10 is not under data\.target\.root=.*download=true"):
        data_mod.build(cfg, need_source=False)


@pytest.mark.parametrize("shift", ["rotate", "noise", "blur", "invert"])
def test_ood_shifts_change_the_test_images_not_their_labels(shift):
    cfg = compose(["data.image_size=16", f"data.target.ood={shift}"])
    t = data_mod.build(cfg, need_source=False).target
    again = data_mod.build(cfg, need_source=False).target
    assert torch.equal(t.ood.labels, t.test.labels) and t.ood.images.dtype == torch.uint8
    assert not torch.equal(t.ood.images, t.test.images)  # shifted
    assert torch.equal(t.ood.images, again.ood.images)  # the same shifted images every run
    milder = compose(
        ["data.image_size=16", f"data.target.ood={shift}", "data.target.ood_severity=0.3"]
    )
    m = data_mod.build(milder, need_source=False).target
    diff = lambda a: (a.ood.images.float() - a.test.images.float()).abs().mean()  # noqa: E731
    assert diff(m) < diff(t)  # severity scales the shift
    assert data_mod.build(compose(["data.image_size=16"]), False).target.ood is None


def test_a_side_shift_changes_every_split_of_that_side_only():
    plain = data_mod.build(compose(["data.image_size=16"]), need_source=True)
    cfg = compose(["data.image_size=16", "data.target.shift=invert"])
    shifted = data_mod.build(cfg, need_source=True)
    for split in ("train", "val", "test"):
        a, b = getattr(plain.target, split), getattr(shifted.target, split)
        assert torch.equal(b.images, 255 - a.images) and torch.equal(b.labels, a.labels)
        assert torch.equal(
            getattr(shifted.source, split).images, getattr(plain.source, split).images
        )
    other_draw = shifted.drawn(2).target.train  # k-shot draws come from the shifted images
    assert torch.equal(other_draw.images, 255 - plain.drawn(2).target.train.images)


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.target.shift=invert", "data.target.shift=invert shifts images in memory, but "
         "data.target is read from disk"),
        ("data.target.ood=invert", "data.target.ood=invert shifts images in memory, but the "
         "target test split is read from disk"),
    ],
)  # fmt: skip
def test_a_shift_of_images_read_from_disk_says_how_to_fix_it(image_folder, override, message):
    root = image_folder("disk", {"a": 5, "b": 5})
    cfg = compose(["data=imagefolder", "data.image_size=16", f"data.target.root={root}",
                   "data.memory_budget_mb=0", "data.num_workers=0", override])  # fmt: skip
    with pytest.raises(DataError, match=re.escape(message) + ".*raise the budget, or "):
        data_mod.build(cfg, need_source=False)


def test_ood_root_is_scored_in_the_targets_classes(image_folder):
    target = image_folder("t", {"a": 6, "b": 6})
    shifted = image_folder("o", {"b": 3, "a": 2, "extra": 1}, seed=3)
    cfg = compose(["data=imagefolder", "data.image_size=16", f"data.target.root={target}",
                   f"data.target.ood_root={shifted}", "data.num_workers=0"])  # fmt: skip
    t = data_mod.build(cfg, need_source=False).target
    assert len(t.ood) == 5  # the target's classes only, with its label numbers
    assert torch.bincount(t.ood.labels).tolist() == [2, 3]
    missing = image_folder("m", {"a": 2})
    with pytest.raises(DataError, match="data.target.ood_root.classes names 'b'"):
        data_mod.build(
            compose(
                [
                    "data=imagefolder",
                    "data.image_size=16",
                    f"data.target.root={target}",
                    f"data.target.ood_root={missing}",
                    "data.num_workers=0",
                ]
            ),  # fmt: skip
            need_source=False,
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.target.ood=fog"], "data.target.ood='fog'"),
        (["data.target.ood=rotate", "data.target.ood_root=/x"], "data.target.ood_root='/x'"),
        (["data.target.ood=rotate", "data.target.ood_severity=0"], "data.target.ood_severity=0"),
        (["data.source.ood=rotate"], "data.source.ood='rotate'"),
        (["data.target.shift=fog"], "data.target.shift='fog'"),
        (
            ["data.source.shift=blur", "data.source.shift_severity=-1"],
            "data.source.shift_severity=-1",
        ),
    ],
)
def test_bad_ood_settings_are_config_errors(overrides, message):
    from transfersweep.errors import ConfigError
    from transfersweep.validation import validate

    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose(overrides))
