"""Composition and schema: every group option composes; typos and wrong types fail early."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from conftest import CONF, ROOT, cli, compose
from transfersweep.errors import ConfigError
from transfersweep.validation import validate

GROUPS = ["backbone", "data", "regime", "freeze", "loss", "optimizer", "trainer", "tracking"]


@pytest.mark.parametrize(
    "group,option",
    [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))],
)
def test_every_group_option_composes_and_validates(group, option):
    needs = {  # options that need the user to say something
        "timm": ["backbone.name=resnet50"],  # which timm model
        "imagefolder": ["regime=target_only"],  # no source folder given: no source regime
    }
    cfg = compose([f"{group}={option}", *needs.get(option, [])])
    if group == "data" and option == "imagefolder":
        assert cfg.data.target.root is None  # the user must say where (a clear DataError at load)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    validate(cfg)


def test_required_groups_exist():
    for g in GROUPS:
        assert any((CONF / g).glob("*.yaml")), g
    backbones = {p.stem for p in (CONF / "backbone").glob("*.yaml")}
    assert {"resnet18", "efficientnet_b0", "convnext_atto", "vit_tiny", "tiny"} <= backbones
    assert {p.stem for p in (CONF / "regime").glob("*.yaml")} == {
        "pretrain_finetune",
        "joint",
        "pretrain_joint",
        "target_only",
        "self_distill",
        "joint_finetune",
    }
    from transfersweep.strategies import BUILT_IN

    # one yaml per built-in strategy, and nothing else
    assert {p.stem for p in (CONF / "freeze").glob("*.yaml")} == set(BUILT_IN)


def test_any_timm_name_without_a_file():
    cfg = compose(["backbone.name=efficientnet_b3"])
    assert cfg.backbone.name == "efficientnet_b3"


def test_unknown_key_is_rejected():
    with pytest.raises(ConfigCompositionException, match="lrr"):
        compose(["optimizer.lrr=0.1"])


def test_wrong_type_is_rejected():
    with pytest.raises((ConfigCompositionException, ValidationError), match="epochs"):
        compose(["trainer.target_epochs=many"])


def test_unknown_freeze_strategy_value_is_rejected():
    with pytest.raises(ConfigError, match=r"freeze\.strategy='half' is not a registered strategy"):
        validate(compose(["freeze.strategy=half"]))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["freeze=full", "freeze.n_blocks=2"],
            r"freeze\.n_blocks=2 is not a key of strategy 'full' \(its keys: none\)",
        ),
        (  # a typo
            ["freeze=last_blocks", "freeze.nblocks=2"],
            r"freeze\.nblocks=2 is not a key of strategy 'last_blocks' \(its keys: freeze\.n_blocks\)",
        ),
        (
            ["freeze=last_blocks", "freeze.n_blocks=two"],
            r"freeze\.n_blocks='two' is invalid for strategy 'last_blocks'",
        ),
        (["freeze.module=no_such_module"], r"freeze\.module='no_such_module' cannot be imported"),
    ],
)
def test_a_strategy_checks_its_own_keys(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose(overrides))


@pytest.mark.parametrize(
    "override,key",
    [
        ("optimizer.lr=-1", "optimizer.lr"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("trainer.source_epochs=0", "trainer.source_epochs"),
        ("data.target.k_shot=0", "data.target.k_shot"),
        ("freeze=last_blocks,freeze.n_blocks=0", "freeze.n_blocks"),
        ("trainer.precision=fp64", "trainer.precision"),
    ],
)
def test_validate_names_the_bad_key(override, key):
    cfg = compose(override.split(","))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_cfg_job_prints_composed_config_quickly(tmp_path):
    import time

    t = time.perf_counter()
    res = cli(["--cfg", "job", "backbone=vit_tiny", "regime=joint"], cwd=tmp_path)
    elapsed = time.perf_counter() - t
    assert res.returncode == 0, res.stderr
    cfg = OmegaConf.create(res.stdout)
    assert cfg.backbone.name == "vit_tiny_patch16_224" and cfg.regime.name == "joint"
    assert elapsed < 20, f"--cfg job took {elapsed:.1f}s: heavy imports are not deferred"


@pytest.mark.parametrize("override", ["trainer.target_epochs=0", "loss.label_smoothing=2"])
def test_a_bad_value_fails_before_torch_is_imported(tmp_path, override):
    """A range error of a single run is found by the config checks alone (exit 2): no torch,
    timm or MLflow import, so it costs a second (bench_startup times it)."""
    res = cli([override], cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert res.returncode == 2, res.stderr[-2000:]
    assert override.split("=")[0] in res.stdout + res.stderr
    heavy = re.findall(r"\|\s+(torch|timm|mlflow)$", res.stderr, flags=re.MULTILINE)
    assert not heavy, heavy


def test_unknown_group_option_lists_choices(tmp_path):
    res = cli(["regime=pretrain_fintune"], cwd=tmp_path)
    assert res.returncode == 1  # Hydra's composition errors (--help states the codes)
    assert "pretrain_fintune" in res.stderr and "pretrain_finetune" in res.stderr


def test_conf_lives_at_repo_root_and_is_the_one_the_package_reads():
    """Users edit conf/ at the top level; the entrypoint reads the package's conf, which is a
    link to it (and a copy inside the wheel), so the two can never differ."""
    from transfersweep import train

    top = ROOT / "conf"
    assert top.is_dir() and not top.is_symlink() and (top / "train.yaml").is_file()
    package_conf = Path(train.__file__).parent / "conf"
    assert package_conf.resolve() == top.resolve()
