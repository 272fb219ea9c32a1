"""Work done once: the frozen-backbone feature cache and pretrain reuse give the same results as doing it again."""

from __future__ import annotations

import logging

import pytest

from conftest import FAST, compose, history, runs, start_cli
from transfersweep import train


def _history(client, run, key):
    return [v for _, v in history(client, run, key)]


@pytest.mark.parametrize(
    "backbone,regime,stage",
    [("tiny", "target_only", "target"), ("tiny", "joint", "joint"),
     ("tiny_vit", "target_only", "target")],
    ids=["cnn-target_only", "cnn-joint", "vit-target_only"],
)  # fmt: skip
def test_feature_cache_matches_the_uncached_path(tmp_path, backbone, regime, stage):
    """The head trained on pooled features computed once: the same metrics, epoch by epoch, to
    1e-5 (what docs/sweeps.md promises), on a CNN and a ViT."""
    base = [
        *FAST,
        f"backbone={backbone}",
        f"regime={regime}",
        "freeze=last_layer",
        "trainer.target_epochs=4",
        "optimizer.lr=0.01",
    ]
    results = {}
    for cache in ("true", "false"):
        out = tmp_path / cache
        train.run(compose([*base, f"trainer.feature_cache={cache}"], out))
        client, (r,) = runs(out)
        results[cache] = (client, r)
    (c1, cached), (c2, plain) = results["true"], results["false"]
    assert cached.data.tags[f"{stage}/feature_cache"] == "on"
    assert plain.data.tags[f"{stage}/feature_cache"].startswith("off: trainer.feature_cache=false")
    for key in (
        f"{stage}/train_loss",
        f"{stage}/train_acc",
        f"{stage}/val_loss",
        f"{stage}/val_acc",
    ):
        assert _history(c1, cached, key) == pytest.approx(_history(c2, plain, key), abs=1e-5), key
    for key in ("val_acc", "test_acc"):
        assert cached.data.metrics[key] == pytest.approx(plain.data.metrics[key], abs=1e-6)


@pytest.mark.parametrize("freeze", ["last_layer", "full", "lp_ft", "last_blocks"])
def test_val_is_scored_from_the_fit_without_a_second_pass_and_the_same_numbers(
    tmp_path, monkeypatch, caplog, freeze
):
    """The best epoch's val scores from the fit (the whole model; the head on float32 pooled
    features for a cached probe; the trainable blocks on float32 cached activations) are the
    whole model's val scores, bit for bit: score() reuses them instead of a second pass over
    val. At this rate the best epoch is not the last one (lp_ft: in its first phase), so
    numbers of another epoch would show."""
    from transfersweep import engine, inputs, stages
    from transfersweep.paradigm import Paradigm
    from transfersweep.sweep.trial import TrialLink
    from transfersweep.tracking import NoRun

    reused = []
    real_score = stages.score

    def spy(inp, cfg, final, val=None):
        reused.append(val)
        return real_score(inp, cfg, final, val)

    monkeypatch.setattr(stages, "score", spy)
    cfg = compose(
        [*FAST, f"freeze={freeze}", "trainer.target_epochs=4", "optimizer.lr=0.05"], tmp_path
    )
    ready = inputs.load(cfg)
    with caplog.at_level(logging.INFO, logger="transfersweep"):
        out = train.train(ready, cfg, Paradigm.from_cfg(cfg), TrialLink(), NoRun())
    if freeze == "last_blocks":  # the suffix trained on the cached output of the frozen blocks
        assert "feature cache: output of block" in caplog.text
    (val,) = reused
    assert val is not None  # the fit's numbers were used
    val_batches = ready.data.eval_batches(ready.stages[-1].data, "val", cfg)
    _, whole = engine.evaluate(
        ready.model, val_batches, ready.preprocess, ready.runtime, len(ready.data.target.classes)
    )
    assert whole == val  # what a second pass over val gives: the same, exactly
    assert out.record.scores["val_acc"] == [whole["acc"]]


def _cached_and_plain(tmp_path, args):
    found = {}
    for cache in ("true", "false"):
        out = tmp_path / cache
        train.run(compose([*args, f"trainer.feature_cache={cache}"], out))
        found[cache] = runs(out)
    (c1, (cached,)), (c2, (plain,)) = found["true"], found["false"]
    return c1, cached, c2, plain


@pytest.mark.parametrize(
    "backbone, freeze, tag",
    [
        ("tiny", ["freeze=last_blocks", "freeze.n_blocks=1"], "feature_cache"),
        ("tiny_vit", ["freeze=last_blocks", "freeze.n_blocks=1"], "feature_cache"),
        ("tiny", ["freeze=surgical", "freeze.block=3"], "feature_cache"),
        ("tiny_vit", ["freeze=surgical", "freeze.block=3"], "feature_cache"),
        # gradual: the head on pooled features, then 1 and 2 blocks on cached activations
        (
            "tiny",
            ["freeze=gradual", "freeze.unfreeze_every=1", "freeze.n_blocks=2"],
            "feature_cache_top1",
        ),
    ],  # fmt: skip
    ids=["cnn-last_blocks", "vit-last_blocks", "cnn-surgical", "vit-surgical", "cnn-gradual"],
)
def test_block_cache_matches_the_uncached_path(tmp_path, backbone, freeze, tag):
    """Frozen leading blocks computed once: the same metrics, epoch by epoch, as the full
    forward. Tolerance 1e-5: the prefix runs over eval-sized batches instead of training ones,
    and float kernels may round differently by batch size (on this CPU they agree exactly)."""
    args = [*FAST, f"backbone={backbone}", "regime=target_only", "trainer.target_epochs=4",
            "optimizer.lr=0.01", "backbone.drop_rate=0.3", *freeze]  # fmt: skip
    c1, cached, c2, plain = _cached_and_plain(tmp_path, args)
    assert cached.data.tags[f"target/{tag}"].startswith("on: output of block ")
    assert plain.data.tags[f"target/{tag}"].startswith("off: trainer.feature_cache=false")
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        got, want = _history(c1, cached, f"target/{key}"), _history(c2, plain, f"target/{key}")
        assert got == pytest.approx(want, abs=1e-5), key
    for key in ("val_acc", "test_acc"):
        assert cached.data.metrics[key] == pytest.approx(plain.data.metrics[key], abs=1e-6)


def test_block_cache_fits_the_memory_budget_or_says_why(tmp_path):
    """1.6 MB of float32 activations: stored as float16 under a 1 MB budget (metrics within
    training noise), refused under 0 MB; a stochastic module in the frozen part refuses too."""
    args = [*FAST, "data.image_size=32", "regime=target_only", "freeze=surgical",
            "freeze.block=2", "trainer.target_epochs=3"]  # fmt: skip
    train.run(compose([*args, "data.memory_budget_mb=1"], tmp_path / "half"))
    _, (half,) = runs(tmp_path / "half")
    assert half.data.tags["target/feature_cache"].startswith("on: output of block 1/5 (float16")
    train.run(compose([*args, "data.memory_budget_mb=0"], tmp_path / "none"))
    _, (none,) = runs(tmp_path / "none")
    assert none.data.tags["target/feature_cache"].startswith("off: the output of block 1 takes")
    assert "over data.memory_budget_mb=0" in none.data.tags["target/feature_cache"]
    vit = [*FAST, "backbone=tiny_vit", "+backbone.kwargs.pos_drop_rate=0.2", "regime=target_only",
           "freeze=last_blocks", "freeze.n_blocks=1"]  # fmt: skip
    train.run(compose(vit, tmp_path / "vit"))
    _, (r,) = runs(tmp_path / "vit")
    assert r.data.tags["target/feature_cache"] == (
        "off: the frozen blocks run 'pos_drop', which is random in training"
    )


def test_feature_cache_is_skipped_with_augmentation_and_says_why(outputs, caplog):
    caplog.set_level(logging.INFO, logger="transfersweep")
    train.run(
        compose([*FAST, "regime=target_only", "freeze=last_layer", "data.augment=true"], outputs)
    )
    _, (r,) = runs(outputs)
    assert r.data.tags["target/feature_cache"].startswith("off: data.augment=true")
    assert "feature cache off: data.augment=true" in caplog.text


def test_identical_pretrain_stage_is_reused_and_a_changed_one_is_not(outputs):
    base = [*FAST, "regime=pretrain_finetune"]
    train.run(compose([*base, "freeze=full"], outputs))
    # Same source stage: another freeze and another target lr (what a sweep varies).
    train.run(compose([*base, "freeze=last_layer", "optimizer.lr=0.003"], outputs))
    train.run(
        compose([*base, "freeze=full", "optimizer.source_lr=0.002"], outputs)
    )  # changed source stage
    client, found = runs(outputs)
    first, second, third = sorted(found, key=lambda r: r.info.start_time)
    assert "pretrain/reused_from" not in first.data.tags
    assert second.data.tags["pretrain/reused_from"] == first.info.run_id
    assert second.data.tags["pretrain/cache_key"] == first.data.tags["pretrain/cache_key"]
    assert "pretrain/train_loss" not in second.data.metrics  # it did not train the stage again
    assert (
        second.data.metrics["pretrain/best_val_acc"] == first.data.metrics["pretrain/best_val_acc"]
    )
    assert "pretrain/reused_from" not in third.data.tags
    assert third.data.tags["pretrain/cache_key"] != first.data.tags["pretrain/cache_key"]


@pytest.mark.slow
def test_concurrent_workers_train_a_shared_pretrain_stage_once(outputs):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{outputs / 'mlflow.db'}")
    client.create_experiment(
        "transfersweep", artifact_location=(outputs / "mlartifacts").as_uri()
    )  # store made once
    args = [
        *FAST,
        "regime=pretrain_finetune",
        "trainer.source_epochs=3",
        f"paths.outputs={outputs}",
    ]
    procs = [start_cli([*args, f"freeze={f}"], cwd=outputs) for f in ("full", "last_layer")]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    _, found = runs(outputs)
    assert len(found) == 2 and all(r.info.status == "FINISHED" for r in found)
    reused = [r for r in found if "pretrain/reused_from" in r.data.tags]
    assert len(reused) == 1
    trained = next(r for r in found if r is not reused[0])
    assert reused[0].data.tags["pretrain/reused_from"] == trained.info.run_id
