"""`freeze=lp_ft`: linear probing, then fine-tuning (Kumar et al., ICLR 2022, "Fine-Tuning
can Distort Pretrained Features and Underperform Out-of-Distribution").

The head first trains alone on the frozen backbone for `freeze.probe_epochs` (on cached
features), then everything trains from that head for the rest of the stage. Fine-tuning from
a trained head instead of a random one keeps the early gradients from distorting the
pretrained features. Learning rates: fine-tuning uses the stage's (optimizer.lr); the probe
uses `freeze.probe_lr_scale` times it (10 by default: a linear head on fixed features takes
a larger step and converges in a few epochs, as in the paper's probe, which is trained to
convergence). At most epochs-1 probe epochs, so at least one epoch fine-tunes."""

from __future__ import annotations

from dataclasses import dataclass

from transfersweep.errors import ConfigError
from transfersweep.strategies.base import FloatRange, IntRange, Layout, Phase, Strategy
from transfersweep.strategies.registry import register


@register
class LinearProbeFineTune(Strategy):
    name = "lp_ft"

    @dataclass
    class Params:
        probe_epochs: int = 10  # epochs of the head alone before everything trains
        probe_lr_scale: float = 10.0  # the probe's learning rate, x the stage's

    search = {"probe_epochs": IntRange(5, 20), "probe_lr_scale": FloatRange(1.0, 30.0, log=True)}

    def check(self) -> None:
        p = self.params
        if p.probe_epochs < 1:
            raise ConfigError(
                f"freeze.probe_epochs={p.probe_epochs} is invalid: probe for at least 1 epoch, "
                "or use freeze=full"
            )
        if p.probe_lr_scale <= 0:
            raise ConfigError(
                f"freeze.probe_lr_scale={p.probe_lr_scale} is invalid: use a positive factor"
            )

    def label(self) -> str:
        return f"{self.name}{self.params.probe_epochs}"

    def phases(self, layout: Layout, epochs: int) -> list[Phase]:
        probe = min(self.params.probe_epochs, epochs - 1)
        return [
            Phase(probe, frozenset(layout.head), self.params.probe_lr_scale, name="probe"),
            Phase(epochs - probe, frozenset(layout.names()), name="finetune"),
        ]
