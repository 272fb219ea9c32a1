"""Freeze strategies, generic over timm models through timm's own block grouping.

Blocks are timm's coarse parameter groups (`model.group_matcher(coarse=True)`):
resnet18 has stem, layer1..4; a ViT has its embedding and each transformer
block. The classifier (`model.get_classifier()`) is never part of a block; any
other parameters timm groups with the head (a final norm, MobileNetV3's
conv_head) belong to the last block.

Frozen means exact: frozen parameters get `requires_grad=False` and stay out of
the optimizer, and every module whose parameters are all frozen is kept in
eval mode while training (`train_mode`), so BatchNorm running statistics and
dropout in the frozen part do not move either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models import group_parameters

from transfersweep.backbone import classifier_prefixes
from transfersweep.config import FreezeStrategy
from transfersweep.errors import ConfigError


def blocks(model: torch.nn.Module) -> list[list[str]]:
    """Parameter names per block, first to last, without the classifier."""
    heads = classifier_prefixes(model)
    groups = group_parameters(model, model.group_matcher(coarse=True))
    out = [[n for n in names if not n.startswith(heads)] for _, names in sorted(groups.items())]
    if out and len(out) > 1 and out[-1] and len(out[-1]) < len(groups[max(groups)]):
        out[-2].extend(out.pop())  # head-group remnants (final norm) join the last block
    return [b for b in out if b]


@dataclass
class FreezePlan:
    strategy: FreezeStrategy
    n_blocks: int  # blocks that train (classifier excluded)
    total_blocks: int
    trainable: int  # parameter elements
    total: int


def apply(
    model: torch.nn.Module, strategy: FreezeStrategy | str, n_blocks: int, model_name: str
) -> FreezePlan:
    """Set requires_grad for `strategy`; the classifier always trains."""
    strategy = FreezeStrategy(strategy)
    bl = blocks(model)
    if strategy == FreezeStrategy.full:
        train_blocks = len(bl)
    elif strategy == FreezeStrategy.last_layer:
        train_blocks = 0
    else:
        if not 1 <= n_blocks <= len(bl):
            raise ConfigError(
                f"freeze.n_blocks={n_blocks} is out of range for {model_name}, which has "
                f"{len(bl)} blocks besides its classifier (timm coarse groups). Choose "
                f"1..{len(bl)}, or freeze=full / freeze=last_layer."
            )
        train_blocks = n_blocks
    trainable_names = {n for b in bl[len(bl) - train_blocks :] for n in b}
    heads = classifier_prefixes(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(heads) or name in trainable_names)
    return FreezePlan(
        strategy=strategy,
        n_blocks=train_blocks,
        total_blocks=len(bl),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total=sum(p.numel() for p in model.parameters()),
    )


def frozen_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The largest sub-modules whose parameters are all frozen (at least one parameter)."""
    out: list[torch.nn.Module] = []

    def visit(m: torch.nn.Module) -> None:
        params = list(m.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(m)
            return
        for child in m.children():
            visit(child)

    visit(model)
    return out


def train_mode(model: torch.nn.Module, frozen: list[torch.nn.Module]) -> None:
    """model.train(), but frozen parts stay in eval mode (BatchNorm statistics, dropout)."""
    model.train()
    for m in frozen:
        m.eval()
