"""Frozen-prefix cache: when a phase trains only later blocks (last_blocks, surgical, the early
epochs of gradual), the frozen leading blocks compute the same thing every epoch, so their
output is computed once per phase and the trainable rest of the model trains on it.

The model is cut at the block boundary with torch.fx, at the granularity of timm's blocks:
every module whose parameters lie all in the frozen prefix or all outside it is an opaque call
(it runs with its own train/eval mode, as in the uncached path); only modules that hold both
(the model itself, a ViT's `blocks` list) are traced through. The prefix graph maps images to
the boundary activation; the suffix graph maps it to logits through the model's own modules
(training them trains the model). Each graph is traced once in training mode and once in eval
mode, because traced code bakes in `self.training`.

When the cut is not possible or not exact, the phase runs the full forward and the caller logs
and tags why: the model does not trace, the suffix reads more than one prefix activation (a
skip connection across the boundary), the prefix holds a stochastic or statistics-updating
module that is not frozen (dropout with p > 0, affine-free BatchNorm), random inputs
(data.augment), or the activations exceed data.memory_budget_mb. They are kept on the training
device in the dtype the prefix produces (float32 on CPU: the cached path then computes what the
uncached one does), or, when only that fits the budget, in float16 (half the memory; a
relative rounding of at most 2^-11 per activation, so metrics agree within training noise
instead of bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from transfersweep import freezing
from transfersweep.strategies import Layout


class _BlockTracer(fx.Tracer):
    """Traces through modules that straddle the boundary; everything else is one call."""

    def __init__(self, prefix: set[str]) -> None:
        from timm.layers import get_notrace_functions, get_notrace_modules

        wrap = tuple(f for f in get_notrace_functions() if callable(f))
        super().__init__(autowrap_functions=wrap)
        self.prefix, self.notrace = prefix, tuple(get_notrace_modules())

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        names = {f"{qualname}.{n}" if qualname else n for n, _ in m.named_parameters()}
        if names:
            return names <= self.prefix or not names & self.prefix
        return isinstance(m, self.notrace) or super().is_leaf_module(m, qualname)


def _stochastic(m: torch.nn.Module) -> bool:
    """A parameterless module whose output depends on train/eval mode."""
    if isinstance(m, torch.nn.modules.dropout._DropoutNd):
        return m.p > 0
    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
        return True  # affine-free: no parameters to freeze it by, statistics would move
    return any(getattr(m, a, 0) for a in ("drop_prob", "prob"))  # timm DropPath, PatchDropout


@dataclass
class _Cut:
    graph: fx.Graph
    boundary: fx.Node


def _cut(model: torch.nn.Module, prefix: set[str], training: bool) -> _Cut | str:
    """The traced model (in `training` mode, frozen parts in eval) and its boundary node."""
    with freezing.modes_kept(model):
        freezing.train_mode(model, freezing.frozen_modules(model)) if training else model.eval()
        try:
            graph = _BlockTracer(prefix).trace(model)
        except Exception as e:  # data-dependent control flow and the like
            return f"torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: {e})"[:300]
    modules = dict(model.named_modules())
    owned = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    side: dict[fx.Node, str] = {}  # "input": computed from the images by the prefix; "suffix"
    for node in graph.nodes:
        inputs = [side.get(a) for a in node.all_input_nodes]
        own = None
        if node.op == "call_module":
            names = {f"{node.target}.{n}" for n, _ in modules[node.target].named_parameters()}
            own = "suffix" if names - prefix else None
        elif node.op == "get_attr" and node.target in owned:
            own = "suffix" if node.target not in prefix else None
        if node.op == "placeholder":  # the images; later ones are optional arguments
            side[node] = "input" if not side else None
        elif own == "suffix" or "suffix" in inputs:
            side[node] = "suffix"
        elif "input" in inputs:
            side[node] = "input"
    stochastic = [
        n.target for n in graph.nodes
        if side.get(n) == "input" and n.op == "call_module" and _stochastic(modules[n.target])
        and not any(True for _ in modules[n.target].parameters())  # frozen ones run in eval
    ]  # fmt: skip
    if stochastic:
        return f"the frozen blocks run {stochastic[0]!r}, which is random in training"
    boundary = [
        n for n in graph.nodes
        if side.get(n) == "input" and any(side.get(u) == "suffix" or u.op == "output" for u in n.users)
    ]  # fmt: skip
    if len(boundary) != 1:
        return f"the trainable blocks read {len(boundary)} activations of the frozen ones, not 1"
    return _Cut(graph, boundary[0])


def _prefix_module(model: torch.nn.Module, cut: _Cut) -> fx.GraphModule:
    gm = fx.GraphModule(model, cut.graph)  # shares model's modules and parameters
    graph = gm.graph
    output = next(n for n in graph.nodes if n.op == "output")
    graph.erase_node(output)
    graph.output(cut.boundary)
    graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _suffix_module(model: torch.nn.Module, cut: _Cut) -> fx.GraphModule | str:
    gm = fx.GraphModule(model, cut.graph)
    graph = gm.graph
    images = next(n for n in graph.nodes if n.op == "placeholder")
    with graph.inserting_before(images):
        activation = graph.placeholder("activation")
    cut.boundary.replace_all_uses_with(activation)
    graph.eliminate_dead_code()
    if images.users:
        return "the trainable blocks read the images directly"
    graph.erase_node(images)
    gm.recompile()
    return gm


class Suffix(torch.nn.Module):
    """The model from the boundary on: trains the model's own parameters (registered as
    `model`, so its state dict is the model's with a `model.` prefix)."""

    def __init__(self, model: torch.nn.Module, train: fx.GraphModule, eval: fx.GraphModule):
        super().__init__()
        self.model = model
        self._graphs = {True: train, False: eval}  # not submodules: they share model's modules
        self.input_dtype: torch.dtype | None = None  # set when activations are stored compactly

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_dtype is not None:
            x = x.to(self.input_dtype)
        return self._graphs[self.training](x)

    def no_weight_decay(self) -> set[str]:
        skip = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else ()
        return {f"model.{n}" for n in skip}


@dataclass
class Split:
    prefix_train: fx.GraphModule  # images -> boundary activation, as the training forward
    prefix_eval: fx.GraphModule  # ... as the evaluation forward
    suffix: Suffix


def split(layout: Layout, n_frozen: int) -> Split | str:
    """Cut `layout.model` after its first `n_frozen` blocks, or say why it cannot be cut."""
    model = layout.model
    prefix = layout.block_names(stop=n_frozen)
    prefix |= {n for n, _ in model.named_buffers() if n.rsplit(".", 1)[0] + ".weight" in prefix}
    parts = {}
    for training in (True, False):
        cut = _cut(model, prefix, training)
        if isinstance(cut, str):
            return cut
        copies: dict[fx.Node, fx.Node] = {}  # each module edits its own graph: the suffix's a copy
        graph = fx.Graph()
        graph.output(graph.graph_copy(cut.graph, copies))
        suffix = _suffix_module(model, _Cut(graph, copies[cut.boundary]))
        if isinstance(suffix, str):
            return suffix
        parts[training] = (_prefix_module(model, cut), suffix)
    return Split(parts[True][0], parts[False][0], Suffix(model, parts[True][1], parts[False][1]))
