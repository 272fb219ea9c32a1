"""`freeze=bitfit`: every bias term and the classifier train; all weights stay frozen (Ben Zaken
et al., ACL 2022, "BitFit"; AutoGluon's `bit_fit`). BatchNorm layers keep their running
statistics (they normalise with them, as frozen layers do), so the only tensors that change
are the biases and the head: a few thousandths of the model."""

from __future__ import annotations

from transfersweep.errors import ConfigError
from transfersweep.strategies.base import Layout, Phase, Strategy
from transfersweep.strategies.registry import register


@register
class BitFit(Strategy):
    name = "bitfit"

    def phases(self, layout: Layout, epochs: int) -> list[Phase]:
        biases = {n for n in layout.block_names() if n.rsplit(".", 1)[-1] == "bias"}
        if not biases:
            raise ConfigError(
                f"freeze=bitfit: {layout.model_name} has no bias parameters outside its "
                "classifier; use freeze=norm or freeze=last_layer"
            )
        return [Phase(epochs, frozenset(biases | set(layout.head)), norm_stats=False)]
