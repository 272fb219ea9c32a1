"""`freeze=surgical`: the classifier plus one block, `freeze.block` (numbered from the input
side, 1..the model's block count); everything else stays frozen (Lee et al., ICLR 2023,
"Surgical Fine-Tuning Improves Adaptation to Distribution Shifts": which block is best depends
on the shift, so it is a searchable key). The default, block 2, is the first block after the
stem or patch embedding: the paper's choice for input-level shifts."""

from __future__ import annotations

from dataclasses import dataclass

from transfersweep.errors import ConfigError
from transfersweep.strategies.base import IntRange, Layout, Phase, Strategy
from transfersweep.strategies.registry import register


@register
class Surgical(Strategy):
    name = "surgical"

    @dataclass
    class Params:
        block: int = 2  # the one block that trains (with the head), 1 = the input side

    # resnets have 5 coarse blocks (stem, layer1-4); widen for ViTs:
    # search.freeze.surgical.block=[1,13]. A block past the model's count fails that trial.
    search = {"block": IntRange(1, 5)}

    def check(self) -> None:
        if self.params.block < 1:
            raise ConfigError(
                f"freeze.block={self.params.block} is invalid: blocks are numbered from 1 "
                "(the input side)"
            )

    def label(self) -> str:
        return f"{self.name}{self.params.block}"

    def phases(self, layout: Layout, epochs: int) -> list[Phase]:
        b = self.params.block
        layout.check_blocks("freeze.block", b)
        return [Phase(epochs, frozenset(layout.blocks[b - 1]) | frozenset(layout.head))]
