"""Data for a transfer run: source and target splits, and the batches each stage trains on.

Joint stages use one union label space: target classes first (0..Ct-1), then the
source classes (Ct..Ct+Cs-1). The target metric of a joint model is read from
its first Ct logits, so it stays comparable with the other regimes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from omegaconf import DictConfig

from transfersweep.config import OOD_SETS, StageData
from transfersweep.data import augment, shifts, sources, splits
from transfersweep.data.batches import Batches, Preprocess
from transfersweep.data.images import ImageSet, TensorImages, concat
from transfersweep.data.model_input import ModelInput
from transfersweep.data.splits import Splits
from transfersweep.errors import DataError

__all__ = ["Batches", "ModelInput", "Preprocess", "Splits", "TransferData", "build"]


@dataclass
class TransferData:
    target: Splits
    source: Splits | None  # None when no stage needs it (target_only)
    augment: augment.TrainAugment | None = (
        None  # data.augment: timm's train transform on train batches
    )

    def num_classes(self, data: StageData) -> int:
        if data == StageData.target:
            return len(self.target.classes)
        if data == StageData.source:
            return len(self._source().classes)
        return len(self.target.classes) + len(self._source().classes)

    def drawn(self, d: int) -> TransferData:
        """The same data with k-shot draw `d` of the target training images (splits.Splits.draw);
        the source is never redrawn: it is pretrained on once and reused."""
        return replace(self, target=self.target.draw(d))

    def _source(self) -> Splits:
        assert self.source is not None, "this regime loaded no source data"
        return self.source

    def side(self, data: StageData, d: DictConfig) -> tuple[Splits, DictConfig]:
        """The splits and the data config (data.target / data.source) of the one side a target
        or source stage trains on (a joint stage trains on both)."""
        assert data != StageData.joint, "a joint stage trains on both sides"
        return (self.target, d.target) if data == StageData.target else (self._source(), d.source)

    def train_batches(
        self, data: StageData, cfg: DictConfig, seed: int, device: torch.device | None = None
    ) -> Batches:
        """Training batches; on a GPU `device`, in-memory images are gathered on it and any
        others are pinned for asynchronous copies."""
        d = cfg.data
        common = dict(
            batch_size=d.batch_size,
            seed=seed,
            num_workers=d.num_workers,
            augment=self.augment,
            device=device,
        )
        if data == StageData.joint:
            src = self._source()
            union = concat(self.target.train, src.train, b_label_offset=len(self.target.classes))
            return Batches(
                union,
                shuffle=True,
                n_target=len(self.target.train),
                target_share=d.joint_target_share,
                **common,
            )
        splits, side = self.side(data, d)
        return Batches(splits.train, shuffle=True, balanced=side.balance == "sampler", **common)

    def eval_batches(
        self, data: StageData, split: str, cfg: DictConfig, device: torch.device | None = None
    ) -> Batches:
        """Evaluation batches of `split` (val, test, or the target's ood); joint stages evaluate
        on the target (the objective)."""
        s = self._source() if data == StageData.source else self.target
        return Batches(
            getattr(s, split),
            batch_size=cfg.trainer.eval_batch_size,
            shuffle=False,
            num_workers=cfg.data.num_workers,
            device=device,
        )


def build(cfg: DictConfig, need_source: bool, mi: ModelInput | None = None) -> TransferData:
    """Source and target splits, every image resized and cropped once as `mi` says (default:
    ModelInput.resolve(cfg), the backbone's timm data config with the data.* overrides)."""
    d = cfg.data
    mi = mi or ModelInput.resolve(cfg)

    def side(name: str) -> Splits:
        ds = d[name]
        pool = sources.load(ds, name, mi, d.memory_budget_mb, d.num_workers)
        if ds.shift:
            setting = f"data.{name}.shift={ds.shift}"
            pool.parts = {
                k: _shifted(v, ds.shift, ds.shift_severity, d.split_seed, setting,
                            f"data.{name}", "shift the files themselves")
                for k, v in pool.parts.items()
            }  # fmt: skip
        return splits.split(pool, d.val_fraction, d.test_fraction, d.split_seed, ds.k_shot, name)

    target = side("target")
    target.ood = _ood(d, target, mi)
    if d.target.ood_val and target.ood is not None:
        target.ood_val, target.ood = _hold_out_ood_val(d, target)
    return TransferData(
        target=target,
        source=side("source") if need_source else None,
        augment=augment.of(cfg, mi),
    )


def _ood(d: DictConfig, target: Splits, mi: ModelInput) -> ImageSet | None:
    """The target's out-of-distribution test images: a shifted copy of its test split, another
    embedded data set's images of the target's classes (data.target.ood=digits for mnist), or
    the images of data.target.ood_root (all of its splits), in the target's classes."""
    t = d.target
    if t.ood in OOD_SETS:
        ds = {"kind": t.ood, "classes": list(target.classes)}
        return _whole(
            sources.load(DictConfig(ds), f"target.ood={t.ood}", mi, d.memory_budget_mb, 0)
        )
    if t.ood:
        return _shifted(
            target.test, t.ood, t.ood_severity, d.split_seed, f"data.target.ood={t.ood}",
            "the target test split", "give data.target.ood_root=<folder of shifted images>",
        )  # fmt: skip
    if t.ood_root:
        ds = {"kind": "imagefolder", "root": t.ood_root, "classes": list(target.classes)}
        pool = sources.load(
            DictConfig(ds), "target.ood_root", mi, d.memory_budget_mb, d.num_workers
        )
        return _whole(pool)
    return None


def _hold_out_ood_val(d: DictConfig, target: Splits) -> tuple[ImageSet, ImageSet]:
    """(shifted validation set, ood test set), disjoint: under a shift, the shifted copy of
    the val split beside the shifted test split; otherwise half of each class of the other
    set or folder (seeded by data.split_seed), the other half staying the ood test set."""
    t = d.target
    assert target.ood is not None
    if t.ood and t.ood not in OOD_SETS:  # a shift: the val split's images, never the test's
        val = _shifted(
            target.val, t.ood, t.ood_severity, d.split_seed, f"data.target.ood={t.ood}",
            "the target val split", "give data.target.ood_root=<folder of shifted images>",
        )  # fmt: skip
        return val, target.ood
    gen = torch.Generator().manual_seed(d.split_seed)
    labels, halves = target.ood.labels, ([], [])
    for c in labels.unique().tolist():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        halves[0].append(members[: len(members) // 2])
        halves[1].append(members[len(members) // 2 :])
    val, test = (torch.sort(torch.cat(h)).values for h in halves)
    return target.ood.subset(val), target.ood.subset(test)


def _shifted(
    part: ImageSet, shift: str, severity: float, seed: int, setting: str, where: str, fix: str
) -> ImageSet:
    """`part`'s images under an input-level shift (data.shifts), once, in memory: for
    data.<side>.shift (every split of a side) and data.target.ood (a copy of the test split)."""
    if not isinstance(part, TensorImages):
        raise DataError(
            f"{setting} shifts images in memory, but {where} is read from disk (over "
            f"data.memory_budget_mb): raise the budget, or {fix}"
        )
    return TensorImages(shifts.apply(part.images, shift, severity, seed=seed), part.labels)


def _whole(pool: sources.Pool) -> ImageSet:
    """Every image of a pool (all of its parts) as one set."""
    parts = list(pool.parts.values())
    out = parts[0]
    for part in parts[1:]:
        out = concat(out, part, b_label_offset=0)
    return out
