"""`freeze=lora`: low-rank adapters (Hu et al., ICLR 2022, "LoRA"; AutoGluon's `lora`) through
the `peft` library, on the backbone's blocks; the classifier trains fully, every base weight
stays frozen.

Which layers get adapters (`freeze.target`): `linear` = every nn.Linear inside the blocks (a
transformer's attention qkv/proj and MLP fc1/fc2), `conv` = every ungrouped nn.Conv2d there
(peft cannot merge adapters into grouped or depthwise convolutions, so those are skipped),
`auto` (default) = `linear` when the backbone has such layers, else `conv`. A backbone with
neither gets an error naming the strategies that work for it.

Adapters are injected when the stage starts (`attach`, peft's `inject_adapter_in_model`) and
merged into the base weights when it ends (`detach`, peft's own `LoraLayer.merge`), so
everything after a stage (test scoring, the checkpoint, the next repeat) sees a plain timm
model: the logged checkpoint is a plain state dict with W = W0 + (alpha / rank) * B A.
Defaults follow the paper's and peft's: rank 8, alpha 16 (scale 2), no adapter dropout; B
starts at zero, so training starts exactly at the pretrained model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from transfersweep.errors import ConfigError
from transfersweep.strategies.base import Choice, FloatRange, Layout, Phase, Strategy
from transfersweep.strategies.registry import register

if TYPE_CHECKING:
    import torch

TARGETS = ("auto", "linear", "conv")
ADAPTER = "default"  # peft's adapter name; parameters are named <layer>.lora_A.default.weight


@register
class LoRA(Strategy):
    name = "lora"

    @dataclass
    class Params:
        rank: int = 8  # r: the adapters' inner dimension
        alpha: float = 16.0  # the update is scaled by alpha / rank
        dropout: float = 0.0  # dropout on the adapters' input
        target: str = "auto"  # auto | linear | conv: which layers of the blocks get adapters

    search = {"rank": Choice((4, 8, 16)), "alpha": FloatRange(4.0, 64.0, log=True)}

    def check(self) -> None:
        p = self.params
        if p.rank < 1:
            raise ConfigError(f"freeze.rank={p.rank} is invalid: use a rank of at least 1, e.g. 8")
        if p.alpha <= 0:
            raise ConfigError(f"freeze.alpha={p.alpha} is invalid: use a positive scale, e.g. 16")
        if not 0 <= p.dropout < 1:
            raise ConfigError(f"freeze.dropout={p.dropout} is invalid: use 0 <= dropout < 1")
        if p.target not in TARGETS:
            raise ConfigError(
                f"freeze.target={p.target!r} is invalid: choose one of {', '.join(TARGETS)}"
            )

    def label(self) -> str:
        return f"{self.name}{self.params.rank}"

    def targets(self, layout: Layout) -> list[str]:
        """Names of the modules that get adapters (ConfigError when there are none)."""
        import torch

        in_blocks = layout.block_names()
        found: dict[str, list[str]] = {"linear": [], "conv": []}
        for name, module in layout.model.named_modules():
            if f"{name}.weight" not in in_blocks:
                continue  # the classifier, or outside the blocks
            if isinstance(module, torch.nn.Linear):
                found["linear"].append(name)
            elif isinstance(module, torch.nn.Conv2d) and module.groups == 1:
                found["conv"].append(name)
        kind = self.params.target
        if kind == "auto":
            kind = "linear" if found["linear"] else "conv"
        if not found[kind]:
            have = ", ".join(f"{len(v)} {k}" for k, v in found.items())
            raise ConfigError(
                f"freeze=lora: {layout.model_name} has no {kind} layers in its blocks that peft "
                f"can adapt and merge ({have}; depthwise and grouped convolutions cannot be "
                "merged). Use freeze.target="
                + ("conv" if kind == "linear" else "linear")
                + " if the other kind is there, or freeze=bitfit, norm, surgical, last_blocks "
                "or full, which work for every timm backbone"
            )
        return found[kind]

    def phases(self, layout: Layout, epochs: int) -> list[Phase]:
        adapters = {n for n, _ in layout.model.named_parameters() if ".lora_" in n}
        if not adapters:  # the input checks, before `attach`: fail now if it cannot attach
            self.targets(layout)
        return [Phase(epochs, frozenset(adapters | set(layout.head)))]

    def attach(self, layout: Layout) -> bool:
        from peft import LoraConfig, inject_adapter_in_model

        p = self.params
        config = LoraConfig(
            r=p.rank,
            lora_alpha=p.alpha,
            lora_dropout=p.dropout,
            target_modules=self.targets(layout),
        )
        inject_adapter_in_model(config, layout.model, adapter_name=ADAPTER)
        return True

    def detach(self, model: torch.nn.Module) -> None:
        """Merge every adapter into its base layer (peft's merge) and put the base layer back
        in its parent: a plain timm model again, with the same parameter names as before."""
        for name, module in list(model.named_modules()):
            if not _is_adapted(module):
                continue
            module.merge(safe_merge=True, adapter_names=[ADAPTER])  # raises on NaN/inf
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
        if "peft_config" in vars(model):  # inject_adapter_in_model's record: the next attach
            del model.peft_config  # (a later repeat) would warn of "multiple adapters"


def _is_adapted(module: torch.nn.Module) -> bool:
    """A peft LoRA layer (duck-typed: importing peft takes seconds)."""
    return hasattr(module, "lora_A") and hasattr(module, "get_base_layer")
