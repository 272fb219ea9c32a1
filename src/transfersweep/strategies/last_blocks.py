"""`freeze=last_blocks`: the last `freeze.n_blocks` of timm's coarse blocks and the classifier
train; the blocks before them stay frozen."""

from __future__ import annotations

from dataclasses import dataclass

from transfersweep.errors import ConfigError
from transfersweep.strategies.base import IntRange, Layout, Phase, Strategy
from transfersweep.strategies.registry import register


@register
class LastBlocks(Strategy):
    name = "last_blocks"

    @dataclass
    class Params:
        n_blocks: int = 1  # blocks that train, counted from the output side (plus the head)

    search = {"n_blocks": IntRange(1, 3)}

    def check(self) -> None:
        if self.params.n_blocks < 1:
            raise ConfigError(
                f"freeze.n_blocks={self.params.n_blocks} is invalid: train at least 1 block, "
                "or use freeze=last_layer"
            )

    def label(self) -> str:
        return f"{self.name}{self.params.n_blocks}"

    def phases(self, layout: Layout, epochs: int) -> list[Phase]:
        n = self.params.n_blocks
        layout.check_blocks("freeze.n_blocks", n)
        return [Phase(epochs, frozenset(layout.names(len(layout.blocks) - n)))]
