"""`freeze=full`: everything trains."""

from __future__ import annotations

from transfersweep.strategies.base import Layout, Phase, Strategy
from transfersweep.strategies.registry import register


@register
class Full(Strategy):
    name = "full"

    def phases(self, layout: Layout, epochs: int) -> list[Phase]:
        return [Phase(epochs, frozenset(layout.names()))]
