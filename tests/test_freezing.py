"""Freezing is exact: frozen tensors (BatchNorm statistics included) are bit-identical after training."""

from __future__ import annotations

import pytest
import timm
import torch

from conftest import FAST, compose
from transfersweep import data as data_mod
from transfersweep import engine, freezing, strategies
from transfersweep.backbone import classifier_prefixes
from transfersweep.config import StageData
from transfersweep.errors import ConfigError

MODELS = {"cnn": ["backbone=tiny"], "vit": ["backbone=tiny_vit"]}
STATS = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm's statistics buffers


def _train(
    kind: str, strategy: str, n_blocks: int = 1, adapt: bool = False, keep: bool = False, **params
):
    cfg = compose(FAST + MODELS[kind] + ["trainer.target_epochs=3", "optimizer.lr=0.01"])
    torch.manual_seed(0)
    model = timm.create_model(cfg.backbone.name, num_classes=5, **cfg.backbone.kwargs)
    data = data_mod.build(cfg, need_source=False)
    params = params | ({"n_blocks": n_blocks} if strategy == "last_blocks" else {})
    chosen = strategies.create(strategy, **params)
    chosen.attach(freezing.layout(model, cfg.backbone.name))  # LoRA's adapters; else nothing
    plan = freezing.apply(model, chosen, cfg.backbone.name)
    first = chosen.phases(freezing.layout(model, cfg.backbone.name), 1)[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rt = engine.Runtime.from_cfg(cfg.trainer)
    prep = data_mod.Preprocess(model.pretrained_cfg["mean"], model.pretrained_cfg["std"])
    engine.fit(
        model,
        data.train_batches(StageData.target, cfg, seed=0),
        data.eval_batches(StageData.target, "val", cfg),
        prep,
        rt,
        cfg,
        epochs=3,
        frozen_stats=not first.norm_stats or keep,
        adapt_stats=adapt,
    )
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    return model, plan, changed


@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_last_layer_changes_only_the_classifier(kind):
    model, plan, changed = _train(kind, "last_layer")
    heads = classifier_prefixes(model)
    assert changed, "the classifier did not train"
    assert all(k.startswith(heads) for k in changed), sorted(
        k for k in changed if not k.startswith(heads)
    )
    assert plan.trainable == sum(p.numel() for p in model.get_classifier().parameters())
    assert plan.trainable < plan.total
    if kind == "cnn":  # BatchNorm running statistics are buffers: they must not move either
        assert any("running_mean" in k for k in model.state_dict())


@pytest.mark.parametrize("kind", ["cnn", "vit"])
@pytest.mark.parametrize("n_blocks", [1, 2])
def test_last_blocks_changes_only_the_last_n_blocks(kind, n_blocks):
    model, plan, changed = _train(kind, "last_blocks", n_blocks)
    blocks = freezing.blocks(model)
    heads = classifier_prefixes(model)
    allowed = {n for b in blocks[-n_blocks:] for n in b}
    frozen = {n for b in blocks[:-n_blocks] for n in b}
    # Buffers (BatchNorm running statistics) belong to the block of their module's parameters:
    # a changed key, parameter or buffer, must sit in a module of a trained block or the head,
    # and no key of a frozen block's modules may change.
    trained_modules = {n.rsplit(".", 1)[0] for n in allowed}
    frozen_modules = {n.rsplit(".", 1)[0] for n in frozen}
    for k in changed:
        module = k.rsplit(".", 1)[0]
        assert k.startswith(heads) or module in trained_modules, k
        assert module not in frozen_modules, k
    frozen_buffers = [k for k in model.state_dict() if k.rsplit(".", 1)[0] in frozen_modules
                      and "running_" in k]  # fmt: skip
    if kind == "cnn":
        assert frozen_buffers, "the frozen blocks have BatchNorm statistics to check"
    assert any(k in allowed for k in changed), "the unfrozen blocks did not train"
    assert plan.n_blocks == n_blocks and plan.total_blocks == len(blocks)


def _only_in(model, changed, allowed: set[str]) -> None:
    """Every changed key (parameter or BatchNorm buffer) sits in a module of `allowed`
    parameters or the head; every other module is bit-identical."""
    heads = classifier_prefixes(model)
    trained_modules = {n.rsplit(".", 1)[0] for n in allowed}
    for k in changed:
        assert k.startswith(heads) or k.rsplit(".", 1)[0] in trained_modules, k


@pytest.mark.parametrize("kind", ["cnn", "vit"])
@pytest.mark.parametrize("block", [1, 3])
def test_surgical_changes_only_its_block(kind, block):
    model, plan, changed = _train(kind, "surgical", block=block)
    blocks = freezing.blocks(model)
    _only_in(model, changed, set(blocks[block - 1]))
    assert any(k in blocks[block - 1] for k in changed), "the surgical block did not train"
    assert plan.n_blocks == 1
    if kind == "cnn":  # the frozen prefix's BatchNorm statistics are among what stayed put
        prefix = {n.rsplit(".", 1)[0] for b in blocks[: block - 1] for n in b}
        assert block == 1 or any(
            k.rsplit(".", 1)[0] in prefix and "running_" in k for k in model.state_dict()
        )


@pytest.mark.parametrize("kind", ["cnn", "vit"])
@pytest.mark.parametrize("strategy, params", [("lp_ft", {}), ("gradual", {"unfreeze_every": 3})])
def test_first_phase_of_lp_ft_and_gradual_trains_the_head_alone(kind, strategy, params):
    """LP-FT's probe and gradual unfreezing's first epochs leave the whole backbone exact."""
    model, plan, changed = _train(kind, strategy, **params)
    _only_in(model, changed, set())
    assert changed and plan.n_blocks == 0


@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_bitfit_changes_only_biases_and_the_head(kind):
    model, plan, changed = _train(kind, "bitfit")
    heads = classifier_prefixes(model)
    for k in changed:  # weights and BatchNorm running statistics are bit-identical
        assert k.startswith(heads) or k.endswith(".bias"), k
    assert any(k.endswith(".bias") and not k.startswith(heads) for k in changed)
    assert plan.trainable < plan.total / 10
    if kind == "cnn":
        assert any("running_mean" in k for k in model.state_dict())


@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_norm_changes_only_normalisation_affines_and_the_head(kind):
    from transfersweep.strategies.norm import norm_parameters

    model, plan, changed = _train(kind, "norm")
    heads = classifier_prefixes(model)
    norms = norm_parameters(model)
    for k in changed:  # running statistics are buffers, not parameters: they may not change
        assert k.startswith(heads) or k in norms, k
    assert any(k in norms for k in changed), "no normalisation layer trained"


@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_lora_trains_only_adapters_and_merges_to_base_plus_scaled_ba(kind):
    rank, alpha = 4, 12.0
    model, plan, changed = _train(kind, "lora", rank=rank, alpha=alpha)
    heads = classifier_prefixes(model)
    state = model.state_dict()
    bases = [k for k in state if ".base_layer." in k]
    assert bases, "no layer got an adapter"
    for k in changed:  # base weights (and BatchNorm statistics) bit-identical before merging
        assert k.startswith(heads) or ".lora_" in k, k
    assert any(".lora_A." in k for k in changed) and any(".lora_B." in k for k in changed)
    assert plan.trainable < plan.total / 2
    adapted = {k.split(".base_layer.")[0] for k in bases if k.endswith(".base_layer.weight")}
    expected = {}
    for layer in adapted:  # W0 + (alpha / rank) B A, by hand (a convolution's B is 1x1)
        a, b = state[f"{layer}.lora_A.default.weight"], state[f"{layer}.lora_B.default.weight"]
        ba = torch.einsum("or,r...->o...", b.flatten(1), a)
        expected[f"{layer}.weight"] = state[f"{layer}.base_layer.weight"] + alpha / rank * ba
    model.eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        adapted_out = model(x)
    strategies.create("lora").detach(model)
    merged = model.state_dict()
    plain = timm.create_model(model.pretrained_cfg["architecture"], num_classes=5,
                              **({"img_size": 16} if kind == "vit" else {}))  # fmt: skip
    assert set(merged) == set(plain.state_dict()), "not a plain timm state dict after merging"
    for k, w in expected.items():
        torch.testing.assert_close(merged[k], w, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(model(x), adapted_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_full_trains_everything(kind):
    model, plan, changed = _train(kind, "full")
    assert plan.trainable == plan.total
    first_block = freezing.blocks(model)[0]
    assert any(k in changed for k in first_block), "the first block did not train under freeze=full"


@pytest.mark.parametrize(
    "name,expected",
    [
        ("test_resnet", 5),
        ("test_vit", 7),
        ("resnet18", 5),
        ("convnext_atto", 5),
        ("vit_tiny_patch16_224", 13),
    ],
)
def test_blocks_come_from_timm_grouping(name, expected):
    model = timm.create_model(name, num_classes=3)
    blocks = freezing.blocks(model)
    assert len(blocks) == expected
    heads = classifier_prefixes(model)
    names = [n for b in blocks for n in b]
    assert not any(n.startswith(heads) for n in names)
    assert len(names) + sum(1 for _ in model.get_classifier().parameters()) == sum(
        1 for _ in model.parameters()
    )


def test_n_blocks_out_of_range_is_a_config_error():
    model = timm.create_model("test_resnet", num_classes=3)
    with pytest.raises(ConfigError, match=r"freeze\.n_blocks=9 .* has 5 blocks .* 1\.\.5"):
        freezing.apply(model, strategies.create("last_blocks", n_blocks=9), "test_resnet")


@pytest.mark.parametrize("strategy", ["surgical", "last_layer", "bitfit"])
def test_norm_stats_adapt_moves_only_batchnorm_running_statistics(strategy):
    """freeze.norm_stats=adapt: every BatchNorm re-estimates its statistics on the target
    batches, frozen blocks included, and nothing else changes that `frozen` keeps."""
    params = {"block": 2} if strategy == "surgical" else {}
    model, _, exact = _train("cnn", strategy, **params)
    _, _, adapted = _train("cnn", strategy, adapt=True, **params)
    names = {n for n, _ in model.named_parameters()}
    stats = {k for k in model.state_dict() if k.endswith(STATS)}
    frozen_block = {n.rsplit(".", 1)[0] for n in freezing.blocks(model)[0]}
    moved = {k for k in adapted - exact if k.rsplit(".", 1)[0] in frozen_block}
    assert moved and moved <= stats, sorted(moved)  # the first (frozen) block's statistics moved
    assert (adapted - exact) <= stats  # and no parameter that `frozen` keeps
    assert {k for k in adapted if k in names} == {k for k in exact if k in names}


def test_norm_stats_keep_trains_full_weights_but_no_statistics():
    """freeze.norm_stats=keep: every BatchNorm keeps its statistics, trained blocks included."""
    model, _, changed = _train("cnn", "full", keep=True)
    stats = {k for k in model.state_dict() if k.endswith(STATS)}
    assert stats and not changed & stats
    assert {n for n, _ in model.named_parameters()} <= changed  # every weight trained


def test_norm_stats_is_a_key_of_every_strategy_and_names_the_variant():
    from transfersweep.paradigm import Paradigm

    cfg = compose([*FAST, "freeze=surgical", "freeze.norm_stats=adapt"])
    assert strategies.from_config(cfg.freeze).norm_stats == "adapt"
    assert Paradigm.from_cfg(cfg).name == "pretrain_finetune+surgical2_adapt"
    assert strategies.from_config(compose(FAST).freeze).norm_stats == "frozen"  # random init
    pretrained = compose(["backbone=lite0", "freeze=lp_ft"])  # pretrained weights: keep
    assert strategies.from_config(pretrained.freeze).norm_stats == "keep"
    keep = compose([*FAST, "freeze=full", "freeze.norm_stats=keep"])
    assert Paradigm.from_cfg(keep).name == "pretrain_finetune+full_keep"
    with pytest.raises(ConfigError, match="freeze.norm_stats='moving' is invalid"):
        strategies.from_config(compose([*FAST, "freeze.norm_stats=moving"]).freeze)


@pytest.mark.parametrize(
    "freeze, epochs, trained, stats_move",
    [
        # (overrides, target epochs, blocks (1-based) whose weights train, whose statistics move)
        (["freeze=surgical", "freeze.block=3", "freeze.norm_stats=frozen"], 2, {3}, {3}),
        # gradual: the head, then block 5, then blocks 4-5: every phase of the stage
        (
            [
                "freeze=gradual",
                "freeze.unfreeze_every=1",
                "freeze.n_blocks=2",
                "freeze.norm_stats=frozen",
            ],
            3,
            {4, 5},
            {4, 5},
        ),  # fmt: skip
        # adapt: every BatchNorm re-estimates, weights as the strategy says
        (["freeze=surgical", "freeze.block=3", "freeze.norm_stats=adapt"], 2, {3}, {1, 2, 3, 4, 5}),
        # keep: no statistics move, even where weights train
        (["freeze=last_blocks", "freeze.n_blocks=2", "freeze.norm_stats=keep"], 2, {4, 5}, set()),
    ],
    ids=["surgical", "gradual-all-phases", "surgical-adapt", "last_blocks-keep"],
)
def test_the_stage_runner_keeps_what_a_strategy_freezes_exact(tmp_path, freeze, epochs, trained,
                                                               stats_move):  # fmt: skip
    """Through the entrypoint (the stage runner decides the BatchNorm modes, phase by phase):
    the logged checkpoint against the weights the run started from, tensor by tensor."""
    from safetensors.torch import load_file, save_file

    from conftest import runs
    from transfersweep import train

    torch.manual_seed(0)
    start = timm.create_model("test_resnet", num_classes=5)
    save_file(start.state_dict(), str(tmp_path / "start.safetensors"))
    before = start.state_dict()
    train.run(compose([*FAST, "regime=target_only", f"trainer.target_epochs={epochs}",
                       "optimizer.lr=0.01", f"backbone.weights={tmp_path}/start.safetensors",
                       *freeze], tmp_path))  # fmt: skip
    client, (run,) = runs(tmp_path)
    after = load_file(client.download_artifacts(run.info.run_id, "checkpoint/model.safetensors",
                                                str(tmp_path)))  # fmt: skip
    heads = classifier_prefixes(start)
    module_block = {n.rsplit(".", 1)[0]: i + 1 for i, b in enumerate(freezing.blocks(start))
                    for n in b}  # fmt: skip
    moved: dict[str, set[int]] = {"weights": set(), "stats": set()}
    for k, v in before.items():
        if not k.startswith(heads) and not torch.equal(v, after[k]):
            moved["stats" if k.endswith(STATS) else "weights"].add(
                module_block[k.rsplit(".", 1)[0]]
            )
    # exact where the strategy freezes; what trains did move (gradual: the stage ends on its
    # best epoch, which may come before block 4's phase)
    if "freeze=gradual" in freeze:
        assert moved["weights"] <= trained and 5 in moved["weights"], moved
        assert moved["stats"] <= stats_move and 5 in moved["stats"], moved
    else:
        assert moved == {"weights": trained, "stats": stats_move}, moved
