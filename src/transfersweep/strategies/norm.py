"""`freeze=norm`: the affine parameters of the normalisation layers (BatchNorm, LayerNorm,
GroupNorm and timm's variants) and the classifier train; everything else stays frozen
(AutoGluon's `norm_fit`). BatchNorm layers keep their running statistics (they normalise with
them), so only the scales and shifts move."""

from __future__ import annotations

from transfersweep.errors import ConfigError
from transfersweep.strategies.base import Layout, Phase, Strategy
from transfersweep.strategies.registry import register


def norm_parameters(model) -> set[str]:  # noqa: ANN001  (a torch module; no torch import here)
    """Names of the parameters that normalisation modules own directly."""
    out = set()
    for prefix, module in model.named_modules():
        if "norm" in type(module).__name__.lower():
            out |= {
                f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)
            }
    return out


@register
class NormOnly(Strategy):
    name = "norm"

    def phases(self, layout: Layout, epochs: int) -> list[Phase]:
        norms = norm_parameters(layout.model) & layout.block_names()
        if not norms:
            raise ConfigError(
                f"freeze=norm: {layout.model_name} has no normalisation layers with parameters; "
                "use freeze=bitfit or freeze=last_layer"
            )
        return [Phase(epochs, frozenset(norms | set(layout.head)), norm_stats=False)]
