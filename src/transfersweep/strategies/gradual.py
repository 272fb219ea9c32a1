"""`freeze=gradual`: gradual unfreezing (Howard & Ruder, ACL 2018, ULMFiT). The head trains
first; every `freeze.unfreeze_every` epochs the next block from the top joins, until
`freeze.n_blocks` blocks (null: all) train with the head for the rest of the stage.

Each step is a phase that starts from the best weights of the one before, with its own
learning-rate schedule (ULMFiT's slanted triangular schedule is not reproduced). The
trainable-parameter count is logged every epoch (`<stage>/params_trainable`)."""

from __future__ import annotations

from dataclasses import dataclass

from transfersweep.errors import ConfigError
from transfersweep.strategies.base import IntRange, Layout, Phase, Strategy
from transfersweep.strategies.registry import register


@register
class Gradual(Strategy):
    name = "gradual"

    @dataclass
    class Params:
        unfreeze_every: int = 5  # epochs between two unfreezing steps
        n_blocks: int | None = None  # blocks that train in the end; null = all

    search = {"unfreeze_every": IntRange(2, 10)}

    def check(self) -> None:
        p = self.params
        if p.unfreeze_every < 1:
            raise ConfigError(
                f"freeze.unfreeze_every={p.unfreeze_every} is invalid: use 1 or more epochs"
            )
        if p.n_blocks is not None and p.n_blocks < 1:
            raise ConfigError(
                f"freeze.n_blocks={p.n_blocks} is invalid: null (all blocks) or at least 1"
            )

    def label(self) -> str:
        n = "" if self.params.n_blocks is None else f"_to{self.params.n_blocks}"
        return f"{self.name}{self.params.unfreeze_every}{n}"

    def phases(self, layout: Layout, epochs: int) -> list[Phase]:
        n = len(layout.blocks) if self.params.n_blocks is None else self.params.n_blocks
        layout.check_blocks("freeze.n_blocks", n)
        every, out, start = self.params.unfreeze_every, [], 0
        for k in range(n + 1):  # k = blocks unfrozen, from the top
            last = k == n
            length = epochs - start if last else min(every, epochs - start)
            if length <= 0:
                break
            trains = (
                frozenset(layout.names(len(layout.blocks) - k)) if k else frozenset(layout.head)
            )
            out.append(Phase(length, trains, name=f"top{k}"))
            start += length
        return out
