"""Freezing, generic over timm models through timm's own block grouping.

Blocks are timm's coarse parameter groups (`model.group_matcher(coarse=True)`):
resnet18 has stem, layer1..4; a ViT has its embedding and each transformer
block. The classifier (`model.get_classifier()`) is never part of a block; any
other parameters timm groups with the head (a final norm, MobileNetV3's
conv_head) belong to the last block. What trains is decided by the strategy
(transfersweep.strategies); this module only carries it out.

Frozen means exact: frozen parameters get `requires_grad=False` and stay out of
the optimizer, and every module whose parameters are all frozen is kept in
eval mode while training (`train_mode`), so BatchNorm running statistics and
dropout in the frozen part do not move either. With `freeze.norm_stats=adapt`
every BatchNorm trains its running statistics on the target batches instead
(its weights stay frozen where the strategy freezes them).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from timm.models import group_parameters

from transfersweep.backbone import classifier_prefixes
from transfersweep.strategies import Layout, Strategy


def blocks(model: torch.nn.Module) -> list[list[str]]:
    """Parameter names per block, first to last, without the classifier."""
    heads = classifier_prefixes(model)
    groups = group_parameters(model, model.group_matcher(coarse=True))
    out = [[n for n in names if not n.startswith(heads)] for _, names in sorted(groups.items())]
    if out and len(out) > 1 and out[-1] and len(out[-1]) < len(groups[max(groups)]):
        out[-2].extend(out.pop())  # head-group remnants (final norm) join the last block
    return [b for b in out if b]


def layout(model: torch.nn.Module, model_name: str = "") -> Layout:
    heads = classifier_prefixes(model)
    head = [n for n, _ in model.named_parameters() if n.startswith(heads)]
    return Layout(model, blocks(model), head, model_name or type(model).__name__)


@dataclass
class FreezePlan:
    """What one phase trains, counted."""

    n_blocks: int  # blocks with at least one trainable parameter (classifier excluded)
    total_blocks: int
    trainable: int  # parameter elements
    total: int


def set_trainable(model_layout: Layout, names: Iterable[str]) -> FreezePlan:
    """requires_grad=True for `names`, False for every other parameter."""
    model, names = model_layout.model, set(names)
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)
    return FreezePlan(
        n_blocks=sum(bool(names.intersection(b)) for b in model_layout.blocks),
        total_blocks=len(model_layout.blocks),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total=sum(p.numel() for p in model.parameters()),
    )


def apply(model: torch.nn.Module, strategy: Strategy, model_name: str = "") -> FreezePlan:
    """Freeze `model` as the strategy's first phase says (ConfigError when it cannot apply)."""
    model_layout = layout(model, model_name)
    first = strategy.phases(model_layout, 1)[0]
    return set_trainable(model_layout, first.trains)


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


def batch_norms(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def train_mode(
    model: torch.nn.Module, frozen: list[torch.nn.Module], adapt: list[torch.nn.Module] = ()
) -> None:
    """model.train(), but frozen parts stay in eval mode (BatchNorm statistics, dropout);
    the `adapt` BatchNorms train their running statistics anyway (freeze.norm_stats=adapt:
    their weights keep requires_grad as the strategy set it, so only the statistics move)."""
    model.train()
    for m in frozen:
        m.eval()
    for m in adapt:
        m.train()


@contextmanager
def modes_kept(model: torch.nn.Module) -> Iterator[None]:
    """Every module's train/eval mode as it was, afterwards (`model.train(flag)` would not do:
    it would put the frozen parts in training mode too)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
