"""Data for a transfer run: source and target splits, and the batches each stage trains on.

Joint stages use one union label space: target classes first (0..Ct-1), then the
source classes (Ct..Ct+Cs-1). The target metric of a joint model is read from
its first Ct logits, so it stays comparable with the other regimes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from omegaconf import DictConfig

from transfersweep.config import StageData
from transfersweep.data import sources, splits
from transfersweep.data.batches import Batches, Preprocess
from transfersweep.data.images import concat
from transfersweep.data.splits import Splits

__all__ = ["Batches", "Preprocess", "Splits", "TransferData", "build"]


@dataclass
class TransferData:
    target: Splits
    source: Splits | None  # None when no stage needs it (target_only)

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

    def train_batches(
        self, data: StageData, cfg: DictConfig, seed: int, pin_memory: bool = False
    ) -> Batches:
        d = cfg.data
        common = dict(
            batch_size=d.batch_size, seed=seed, num_workers=d.num_workers, pin_memory=pin_memory
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
        part = self.target.train if data == StageData.target else self._source().train
        return Batches(part, shuffle=True, **common)

    def eval_batches(
        self, data: StageData, split: str, cfg: DictConfig, pin_memory: bool = False
    ) -> Batches:
        """Evaluation batches; joint stages evaluate on the target (the objective)."""
        s = self._source() if data == StageData.source else self.target
        return Batches(
            getattr(s, split),
            batch_size=cfg.trainer.eval_batch_size,
            shuffle=False,
            num_workers=cfg.data.num_workers,
            pin_memory=pin_memory,
        )


def build(cfg: DictConfig, need_source: bool) -> TransferData:
    d = cfg.data

    def side(name: str) -> Splits:
        ds = d[name]
        pool = sources.load(ds, name, d.image_size, d.memory_budget_mb, d.num_workers)
        return splits.split(pool, d.val_fraction, d.test_fraction, d.split_seed, ds.k_shot, name)

    target = side("target")
    return TransferData(target=target, source=side("source") if need_source else None)
