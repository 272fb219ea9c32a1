"""`freeze=last_layer`: only the freshly reset classifier trains; the backbone (BatchNorm
statistics too) stays frozen, so its pooled features can be computed once (feature cache)."""

from __future__ import annotations

from transfersweep.strategies.base import Layout, Phase, Strategy
from transfersweep.strategies.registry import register


@register
class LastLayer(Strategy):
    name = "last_layer"

    def phases(self, layout: Layout, epochs: int) -> list[Phase]:
        return [Phase(epochs, frozenset(layout.head))]
