"""The strategy interface as the generic code uses it: phases, learning-rate scales in the
optimizer's groups, the cacheable prefix, and the paradigm value built from a config."""

from __future__ import annotations

import re

import pytest
import timm
import torch

from conftest import FAST, compose, runs
from transfersweep import engine, freezing, strategies
from transfersweep.paradigm import Paradigm


def _layout():
    return freezing.layout(timm.create_model("test_resnet", num_classes=3), "test_resnet")


def test_lr_scales_reach_the_optimizer_groups():
    cfg = compose(FAST)
    layout = _layout()
    freezing.set_trainable(layout, layout.names())
    scales = {n: 10.0 for n in layout.head}
    opt, sched = engine.make_optimizer(layout.model, cfg.optimizer, 1e-3, 10, 0, scales)
    head = {id(p) for n, p in layout.model.named_parameters() if n in layout.head}
    for group in opt.param_groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= head or not ids & head  # a group is all head or no head
        assert group["lr"] == pytest.approx(1e-2 if ids <= head else 1e-3)
        if all(p.ndim <= 1 for p in group["params"]):
            assert group["weight_decay"] == 0.0  # biases and norms: no decay, as timm does
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(layout.model.parameters()))
    opt.step()
    sched.step()  # the schedule scales every group alike: the ratio stays 10
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert lrs[1] / lrs[0] == pytest.approx(10.0)


def test_the_head_rate_depends_on_whether_blocks_train_with_it():
    from transfersweep.config import StageData
    from transfersweep.regime import Stage
    from transfersweep.stages import _rates

    cfg = compose([*FAST, "optimizer=adamw_pretrained", "optimizer.head_lr_scale=2"])
    layout, head = _layout(), set(_layout().head)

    def head_factors(name, data=StageData.target, **params):
        strategy = strategies.create(name, **params)
        stage = Stage("target", data, 5, 1e-3, strategy, 3, None)
        out = []
        for phase in strategy.phases(layout, 5):
            _, scales = _rates({}, cfg, stage, phase, layout)
            assert set(scales) in (set(), head)  # only the head's rate moves
            out.append((phase.lr_scale, scales.get(next(iter(head)), 1.0)))
        return out

    assert head_factors("last_layer") == [(None, 10.0)]  # the probe: optimizer.probe_lr_scale
    assert head_factors("full") == [(None, 2.0)]  # with blocks: optimizer.head_lr_scale
    # lp_ft's probe has its own rate (freeze.probe_lr_scale): no second factor on top of it
    assert head_factors("lp_ft", probe_epochs=2) == [(10.0, 1.0), (None, 2.0)]
    assert head_factors("last_layer", StageData.source) == [(None, 1.0)]  # pretraining: none
    # beside an early block, the head's input is still frozen: the probe's rate (surgical)
    assert head_factors("surgical", block=2) == [(None, 10.0)]
    assert head_factors("last_blocks", n_blocks=1) == [(None, 2.0)]  # the last block trains


def test_phases_and_cached_prefix_of_the_built_ins():
    layout = _layout()
    n = len(layout.blocks)
    (head_only,) = strategies.create("last_layer").phases(layout, 5)
    (two,) = strategies.create("last_blocks", n_blocks=2).phases(layout, 5)
    (everything,) = strategies.create("full").phases(layout, 5)
    assert head_only.trains == set(layout.head) and head_only.epochs == 5
    assert strategies.create("last_layer").cached_prefix(layout, head_only) == n
    assert strategies.create("last_blocks").cached_prefix(layout, two) == n - 2
    assert strategies.create("full").cached_prefix(layout, everything) == 0
    assert everything.trains == {name for name, _ in layout.model.named_parameters()}


def test_paradigm_is_a_value_built_and_read_in_one_place():
    cfg = compose([*FAST, "regime=joint", "freeze=last_blocks", "freeze.n_blocks=2"])
    p = Paradigm.from_cfg(cfg)
    assert (p.name, p.regime, p.strategy, dict(p.params)) == (
        "joint+last_blocks2", "joint", "last_blocks", {"n_blocks": 2}
    )  # fmt: skip
    assert p.tags() == {
        "paradigm": "joint+last_blocks2",
        "regime": "joint",
        "freeze": "last_blocks",
    }
    assert Paradigm.from_dict(p.to_dict()) == p
    assert Paradigm.from_trial({"paradigm": p.to_dict()}, {}) == p
    # a trial whose job failed before it could record its paradigm: named from its parameters
    assert Paradigm.from_trial({}, {"regime": "joint", "freeze": "full"}).name == "joint+full"


def test_attach_and_detach_change_nothing_by_default():
    layout = _layout()
    before = {k: v.clone() for k, v in layout.model.state_dict().items()}
    assert strategies.create("full").attach(layout) is False
    strategies.create("full").detach(layout.model)
    after = layout.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("backbone", ["tiny", "tiny_vit"])
@pytest.mark.parametrize(
    "freeze",
    [
        ["freeze=surgical", "freeze.block=2"],
        ["freeze=lp_ft", "freeze.probe_epochs=2"],
        ["freeze=gradual", "freeze.unfreeze_every=1", "freeze.n_blocks=2"],
        ["freeze=bitfit"],
        ["freeze=norm"],
        ["freeze=lora", "freeze.rank=4"],
    ],
    ids=["surgical", "lp_ft", "gradual", "bitfit", "norm", "lora"],
)
def test_new_strategies_run_end_to_end(outputs, backbone, freeze):
    from transfersweep import train

    args = [*FAST, f"backbone={backbone}", "regime=target_only", "trainer.target_epochs=4"]
    train.run(compose([*args, *freeze], outputs))
    client, (r,) = runs(outputs)
    name = freeze[0].split("=")[1]
    assert r.info.status == "FINISHED" and r.data.tags["freeze"] == name
    hist = client.get_metric_history(r.info.run_id, "target/params_trainable")
    per_epoch = [h.value for h in sorted(hist, key=lambda h: h.step)]
    assert len(per_epoch) == 4  # logged every epoch
    if name == "gradual":  # head, +1 block, +2 blocks (then stays)
        assert per_epoch[0] < per_epoch[1] < per_epoch[2] == per_epoch[3]
    elif name == "lp_ft":  # 2 probe epochs on the head, then everything
        assert per_epoch[0] == per_epoch[1] < per_epoch[2] == per_epoch[3]
        assert r.data.tags["target/feature_cache_probe"] == "on"  # probe on cached features
    else:
        assert len(set(per_epoch)) == 1


@pytest.mark.parametrize(
    "override, message",
    [
        ("freeze.block=99", "freeze.block=99 is out of range"),
        ("freeze.block=0", "freeze.block=0 is invalid"),
        ("freeze.probe_epochs=0", "freeze.probe_epochs=0 is invalid"),
        ("freeze.probe_lr_scale=-1", "freeze.probe_lr_scale=-1.0 is invalid"),
        ("freeze.unfreeze_every=0", "freeze.unfreeze_every=0 is invalid"),
        ("freeze.n_blocks=many", "freeze.n_blocks='many' is invalid for strategy 'gradual'"),
        ("freeze.rank=0", "freeze.rank=0 is invalid"),
        ("freeze.alpha=-2", "freeze.alpha=-2.0 is invalid"),
        ("freeze.dropout=1", "freeze.dropout=1.0 is invalid"),
        ("freeze.target=attn", "freeze.target='attn' is invalid: choose one of auto, linear"),
        # test_resnet has no linear layer outside its classifier
        ("freeze.target=linear", "freeze=lora: test_resnet has no linear layers in its blocks"),
    ],
)
def test_new_strategy_keys_fail_clearly(outputs, override, message):
    from transfersweep import train
    from transfersweep.errors import ConfigError

    strategy = {"block": "surgical", "probe": "lp_ft", "n_blo": "gradual", "unfre": "gradual"}
    strategy = strategy.get(override[7:12], "lora")
    with pytest.raises(ConfigError, match=re.escape(message)):
        train.run(compose([*FAST, f"freeze={strategy}", override], outputs))


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_layer_decay_is_in_the_optimizers_learning_rates(name):
    """optimizer.layer_decay: the rates in the optimizer's groups fall by the factor per timm
    layer from the head down (timm applies lr_scale only in its own schedulers; ours does it
    in the groups themselves)."""
    from timm.models import group_parameters

    cfg = compose(FAST)
    model = timm.create_model(name, num_classes=3)
    layer_of = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    last = max(layer_of.values())
    opt, sched = engine.make_optimizer(
        model, cfg.optimizer, 1e-3, 10, 0, engine.layer_decay_scales(model, 0.5)
    )
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for n, p in model.named_parameters():
        assert lr_of[id(p)] == pytest.approx(1e-3 * 0.5 ** (last - layer_of[n])), n
    head = model.get_classifier().weight
    assert lr_of[id(head)] == pytest.approx(1e-3) and last >= 3
    opt.step()
    sched.step()
    ratio = {g["lr"] / g["initial_lr"] for g in opt.param_groups}
    assert max(ratio) == pytest.approx(min(ratio))  # the schedule keeps the decay


def test_layer_decay_end_to_end_and_a_bad_value(outputs):
    from transfersweep import train
    from transfersweep.errors import ConfigError

    args = [*FAST, "backbone=tiny_vit", "regime=target_only", "optimizer.layer_decay=0.6"]
    train.run(compose(args, outputs))
    _, (r,) = runs(outputs)
    assert r.info.status == "FINISHED" and r.data.params["optimizer.layer_decay"] == "0.6"
    with pytest.raises(ConfigError, match=re.escape("optimizer.layer_decay=1.5")):
        train.run(compose([*FAST, "optimizer.layer_decay=1.5"], outputs))


def test_lora_checkpoint_is_merged_and_loads_as_backbone_weights(outputs):
    """A LoRA run on a ViT logs a plain timm state dict (adapters merged), which the next run
    takes as backbone.weights; the run's adapters were on the attention and MLP layers."""
    from safetensors.torch import load_file

    from transfersweep import train

    args = [*FAST, "backbone=tiny_vit", "regime=target_only"]
    train.run(compose([*args, "freeze=lora"], outputs))
    client, (a,) = runs(outputs)
    assert a.info.status == "FINISHED" and a.data.tags["paradigm"] == "target_only+lora8"
    path = client.download_artifacts(a.info.run_id, "checkpoint/model.safetensors", str(outputs))
    weights = load_file(path)
    plain = timm.create_model("test_vit", num_classes=10, img_size=16).state_dict()
    assert set(weights) == set(plain) and not any("lora" in k for k in weights)
    trainable = client.get_metric_history(a.info.run_id, "target/params_trainable")[0].value
    assert trainable < sum(v.numel() for v in plain.values()) / 2
    uri = f"runs:/{a.info.run_id}/checkpoint/model.safetensors"
    train.run(compose([*args, "freeze=last_layer", f"backbone.weights={uri}"], outputs))
    _, found = runs(outputs)
    assert all(r.info.status == "FINISHED" for r in found) and len(found) == 2
