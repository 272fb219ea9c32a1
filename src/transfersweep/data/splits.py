"""Seeded, stratified train/val/test splits and the per-class k-shot draws.

Splits depend only on the data, the fractions and `data.split_seed`, never on the
training seed, so repeated trials and different paradigms see the same images. The val and
test splits are fixed; the k-shot training images are a *draw*: draw 0 is the first k of each
class in the split's seeded order, draw d > 0 a seeded resample of each class's training
candidates. Draw d holds the same images in every trial of a study (it depends only on the
split and d), so paradigms are compared on identical draws (`trainer.repeat_over`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import torch

from transfersweep.data.images import ImageSet
from transfersweep.data.sources import Pool
from transfersweep.errors import DataError


@dataclass
class Splits:
    classes: list[str]
    train: ImageSet
    val: ImageSet
    test: ImageSet
    skipped_files: int = 0
    # The k-shot draw: `train` is candidates[index]; per_class lists each class's candidate
    # indices in the split's seeded order (draw 0 takes the first k of each).
    candidates: ImageSet | None = None
    per_class: list[torch.Tensor] | None = None
    index: torch.Tensor | None = None
    k_shot: int | None = None
    seed: int = 0
    draw_id: int = 0
    ood: ImageSet | None = None  # out-of-distribution test images (data.target.ood / ood_root)
    ood_val: ImageSet | None = None  # held-out shifted validation images (data.target.ood_val)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def draw(self, d: int) -> Splits:
        """These splits with k-shot draw `d` as the training images (val and test unchanged).
        Without a k-shot limit every draw is the whole training set."""
        if d == self.draw_id or self.k_shot is None or self.per_class is None:
            return self
        assert self.candidates is not None
        if d == 0:
            picked = [m[: self.k_shot] for m in self.per_class]
        else:
            # Seeded by (split seed, d) alone: the same draw in every trial and process.
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + d)
            picked = [
                m[torch.randperm(len(m), generator=gen)[: self.k_shot]] for m in self.per_class
            ]
        index = torch.sort(torch.cat(picked)).values
        return replace(self, train=self.candidates.subset(index), index=index, draw_id=d)

    def digest(self) -> str:
        """A short fingerprint of which training images this draw holds (logged per repeat)."""
        if self.index is None:
            return "all"
        return hashlib.sha1(self.index.numpy().astype("int64").tobytes()).hexdigest()[:12]


def _per_class(labels: torch.Tensor, n_classes: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Indices of each class in a seeded random order."""
    perm = torch.randperm(len(labels), generator=gen)
    return [perm[labels[perm] == c] for c in range(n_classes)]


def split(
    pool: Pool, val_fraction: float, test_fraction: float, seed: int, k_shot: int | None, side: str
) -> Splits:
    gen = torch.Generator().manual_seed(seed)
    train = pool.parts["train"]
    holdout = {"val": val_fraction, "test": test_fraction}
    cut = {name: frac for name, frac in holdout.items() if name not in pool.parts}
    idx: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}
    for c, members in enumerate(_per_class(train.labels, len(pool.classes), gen)):
        n, need = len(members), 1 + len(cut)
        if n < need:
            raise DataError(
                f"data.{side}: class {pool.classes[c]!r} has {n} image(s); it needs at least {need} "
                f"to give train{'/' + '/'.join(cut) if cut else ''} images. Add images, or provide "
                "train/ val/ test/ folders."
            )
        start = 0
        for name, frac in cut.items():
            take = max(1, round(n * frac))
            take = min(take, n - start - 1)  # keep at least one training image
            idx[name].append(members[start : start + take])
            start += take
        idx["train"].append(members[start:])
    train_idx = idx["train"]
    if k_shot is not None:
        short = [(pool.classes[c], len(m)) for c, m in enumerate(train_idx) if len(m) < k_shot]
        if short:
            cls, have = min(short, key=lambda s: s[1])
            raise DataError(
                f"data.{side}.k_shot={k_shot} but class {cls!r} has only {have} training image(s) "
                f"after the val/test split ({len(short)} class(es) short). Lower data.{side}.k_shot "
                f"to at most {have}, or add images."
            )
    per_class = train_idx
    if k_shot is not None:
        train_idx = [m[:k_shot] for m in train_idx]
    index = torch.sort(torch.cat(train_idx)).values
    parts = {"train": train.subset(index)}
    for name in ("val", "test"):
        if name in pool.parts:
            parts[name] = pool.parts[name]
        else:
            parts[name] = train.subset(torch.sort(torch.cat(idx[name])).values)
        if len(parts[name]) == 0:
            raise DataError(f"data.{side}: the {name} split is empty; add images to its folder")
    return Splits(
        pool.classes, parts["train"], parts["val"], parts["test"], pool.skipped_files,
        candidates=train, per_class=per_class, index=index, k_shot=k_shot, seed=seed,
    )  # fmt: skip
