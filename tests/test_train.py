"""End to end through the real entrypoint: every regime x freeze, MLflow contents, bad input."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file

from conftest import FAST, cli, compose, runs
from transfersweep import train
from transfersweep.errors import TransferSweepError

REGIMES = ["pretrain_finetune", "joint", "pretrain_joint", "target_only"]
FREEZES = ["last_layer", "last_blocks", "full"]
STAGE_PREFIXES = {
    "pretrain_finetune": ["pretrain", "finetune"],
    "joint": ["joint"],
    "pretrain_joint": ["pretrain", "joint"],
    "target_only": ["target"],
}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """One multirun of the entrypoint over all 12 regime x freeze cells."""
    out = tmp_path_factory.mktemp("grid")
    res = cli(
        [
            "-m",
            *FAST,
            f"regime={','.join(REGIMES)}",
            f"freeze={','.join(FREEZES)}",
            f"paths.outputs={out}",
        ],
        cwd=out,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, res


def test_every_regime_and_freeze_runs_end_to_end(grid):
    out, res = grid
    client, found = runs(out)
    assert len(found) == 12
    assert all(r.info.status == "FINISHED" for r in found)
    cells = {(r.data.tags["regime"], r.data.tags["freeze"]) for r in found}
    assert cells == {(g, f) for g in REGIMES for f in FREEZES}


def test_runs_carry_params_tags_stage_metrics_and_checkpoint(grid):
    out, _ = grid
    client, found = runs(out)
    for r in found:
        tags, params, metrics = r.data.tags, r.data.params, r.data.metrics
        regime = tags["regime"]
        variant = tags["freeze"] + ("1" if tags["freeze"] == "last_blocks" else "")  # n_blocks=1
        assert r.info.run_name == tags["paradigm"] == f"{regime}+{variant}"
        assert tags["backbone"] == "test_resnet" and tags["data"] == "digits"
        assert params["backbone.name"] == "test_resnet" and params["regime.name"] == regime
        assert params["freeze.strategy"] == tags["freeze"]
        assert 0.0 <= metrics["val_acc"] <= 1.0 and 0.0 <= metrics["test_acc"] <= 1.0
        for prefix in STAGE_PREFIXES[regime]:
            if prefix == "pretrain" and "pretrain/reused_from" in tags:
                continue  # trained once by another cell of the grid (transfersweep.reuse)
            assert f"{prefix}/params_trainable" in metrics and f"{prefix}/params_total" in metrics
            history = client.get_metric_history(r.info.run_id, f"{prefix}/val_acc")
            expected = 1 if prefix == "pretrain" else 2  # FAST: 1 source epoch, 2 target epochs
            assert sorted(m.step for m in history) == list(range(1, expected + 1))
        last = STAGE_PREFIXES[regime][-1]
        if tags["freeze"] == "full":
            assert metrics[f"{last}/params_trainable"] == metrics[f"{last}/params_total"]
        else:
            assert metrics[f"{last}/params_trainable"] < metrics[f"{last}/params_total"]
        names = {a.path for a in client.list_artifacts(r.info.run_id, "checkpoint")}
        assert names == {"checkpoint/model.safetensors", "checkpoint/config.yaml"}


def test_grid_trains_the_shared_pretrain_stage_once(grid):
    out, _ = grid
    _, found = runs(out)
    pretrained = [
        r for r in found if r.data.tags["regime"] in ("pretrain_finetune", "pretrain_joint")
    ]
    reused = [r for r in pretrained if "pretrain/reused_from" in r.data.tags]
    assert len(pretrained) == 6 and len(reused) == 5
    assert len({r.data.tags["pretrain/cache_key"] for r in pretrained}) == 1


def test_progress_lines_and_final_summary(grid):
    _, res = grid
    log = res.stdout + res.stderr
    assert re.search(
        r"\[finetune\] epoch +2/2 +loss [\d.]+ +acc [\d.]+ +val_loss [\d.]+ +val_acc [\d.]+ .* img/s",
        log,
    )
    assert re.search(
        r"done: pretrain_finetune\+full .* val_acc [\d.]+ +test_acc [\d.]+ .*MLflow run [0-9a-f]{32}",
        log,
    )
    assert "#/experiments/" in log


def test_checkpoint_is_the_weights_of_the_next_run_and_last_layer_is_exact(outputs):
    """Run A trains everything; run B starts from A's logged checkpoint with freeze=last_layer:
    B's backbone tensors (BatchNorm buffers too) must equal A's bit for bit."""
    base = [*FAST, "regime=target_only"]
    train.run(compose([*base, "freeze=full"], outputs))
    client, (a,) = runs(outputs)
    uri = f"runs:/{a.info.run_id}/checkpoint/model.safetensors"
    train.run(compose([*base, "freeze=last_layer", f"backbone.weights={uri}", "seed=3"], outputs))
    client, found = runs(outputs)
    b = next(r for r in found if r.info.run_id != a.info.run_id)
    assert b.info.status == "FINISHED" and b.data.params["backbone.weights"] == uri
    wa = load_file(
        client.download_artifacts(a.info.run_id, "checkpoint/model.safetensors", str(outputs))
    )
    wb = load_file(
        client.download_artifacts(b.info.run_id, "checkpoint/model.safetensors", str(outputs / "b"))
    )
    backbone_keys = [k for k in wa if not k.startswith("fc.")]
    assert any("running_var" in k for k in backbone_keys)
    assert all(torch.equal(wa[k], wb[k]) for k in backbone_keys)
    assert not torch.equal(wa["fc.weight"], wb["fc.weight"])


def test_failure_inside_training_marks_the_run_failed_with_the_reason(outputs):
    cfg = compose([*FAST, "regime=target_only", "optimizer=sgd", "optimizer.lr=1e30"], outputs)
    with pytest.raises(
        TransferSweepError, match=r"non-finite loss at epoch .* lower optimizer\.lr \(now 1e\+30\)"
    ):
        train.run(cfg)
    _, (r,) = runs(outputs)
    assert r.info.status == "FAILED"
    assert "non-finite loss at epoch" in r.data.tags["error"]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["backbone.name=resnet181"],
            r"backbone\.name='resnet181' is not a timm model\. Did you mean: .*resnet18",
        ),
        (
            ["freeze=last_blocks", "freeze.n_blocks=9"],
            r"freeze\.n_blocks=9 is out of range for test_resnet",
        ),
        (
            ["data=imagefolder", "data.target.root=/nonexistent/goldfinches", "regime=target_only"],
            r"data\.target\.root='/nonexistent/goldfinches' does not exist",
        ),
        (
            ["data=imagefolder", "data.target.root=/nonexistent/goldfinches"],
            r"regime=pretrain_finetune trains on a source set, but data\.source\.root is not set",
        ),
        (
            ["data.target.k_shot=500"],
            r"data\.target\.k_shot=500 but class '\d' has only \d+ training image",
        ),
        (
            ["backbone.weights=/nonexistent/w.safetensors"],
            r"backbone\.weights='/nonexistent/w\.safetensors' does not exist",
        ),
        (["trainer.target_epochs=0"], r"trainer\.target_epochs=0 is invalid"),
    ],
)
def test_bad_input_fails_before_any_run(outputs, overrides, message):
    with pytest.raises(TransferSweepError, match=message):
        train.run(compose([*FAST, *overrides], outputs))
    _, found = runs(outputs)
    assert found == []  # nothing was opened, so nothing is left RUNNING


def test_cli_bad_input_exits_nonzero_with_a_short_error(tmp_path):
    res = cli(
        [*FAST, "freeze=last_blocks", "freeze.n_blocks=9", f"paths.outputs={tmp_path}"],
        cwd=tmp_path,
    )
    assert res.returncode == 2
    err = res.stdout + res.stderr
    assert "error: freeze.n_blocks=9 is out of range" in err and "Traceback" not in err
    _, found = runs(tmp_path)
    assert found == []


def test_repeats_report_mean_std_and_ci_over_draws_and_seeds(outputs):
    import json
    import math
    import statistics

    train.run(compose([*FAST, "trainer.repeats=3"], outputs))
    client, (r,) = runs(outputs)
    m = r.data.metrics
    vals = [
        h.value
        for h in sorted(
            client.get_metric_history(r.info.run_id, "repeat/val_acc"), key=lambda h: h.step
        )
    ]
    assert len(vals) == 3
    assert m["val_acc"] == pytest.approx(statistics.fmean(vals))
    assert m["val_acc_std"] == pytest.approx(statistics.stdev(vals))
    # 95 % Student t half-width by hand: t(0.975, df=2) = 4.302652729749464
    assert m["val_acc_ci95"] == pytest.approx(
        4.302652729749464 * statistics.stdev(vals) / math.sqrt(3)
    )
    assert m["val_acc_n"] == 3
    assert {"finetune/val_acc", "finetune_r1/val_acc", "finetune_r2/val_acc"} <= set(m)
    assert not any(k.startswith("pretrain_r") for k in m)  # the source stage runs once
    summary = json.load(
        open(client.download_artifacts(r.info.run_id, "summary.json", str(outputs)))
    )
    record = summary["record"]  # every score of every repeat, one dict (scores.Record)
    assert record["scores"]["val_acc"] == pytest.approx(vals)
    assert record["index"] == [0, 1, 2]
    assert len(set(record["draw"])) == 3  # repeat_over=both: each repeat its own k-shot draw
    assert summary["val_acc"]["low"] == pytest.approx(m["val_acc"] - m["val_acc_ci95"])


def test_repeat_over_seed_keeps_one_draw_and_first_repeat_gives_fresh_ones(outputs):
    import json

    train.run(compose([*FAST, "trainer.repeats=2", "trainer.repeat_over=seed"], outputs))
    train.run(compose([*FAST, "trainer.repeats=2", "trainer.first_repeat=5"], outputs))
    client, found = runs(outputs)
    draws = {}
    for r in found:
        path = client.download_artifacts(
            r.info.run_id, "summary.json", str(outputs / r.info.run_id)
        )
        draws[r.data.params["trainer.first_repeat"]] = json.load(open(path))["record"]["draw"]
    seed_only, fresh = draws["0"], draws["5"]
    assert len(set(seed_only)) == 1 and len(set(fresh)) == 2 and not set(fresh) & set(seed_only)


def test_ood_acc_is_scored_every_repeat_and_reported(outputs):
    import json

    train.run(compose([*FAST, "trainer.repeats=2", "data.target.ood=invert"], outputs))
    client, (r,) = runs(outputs)
    m = r.data.metrics
    hist = client.get_metric_history(r.info.run_id, "repeat/ood_acc")
    assert sorted(h.step for h in hist) == [0, 1]
    assert m["ood_acc"] == pytest.approx(sum(h.value for h in hist) / 2)
    assert "ood_acc_ci95" in m and m["val_acc"] != m["ood_acc"]
    summary = json.load(
        open(client.download_artifacts(r.info.run_id, "summary.json", str(outputs)))
    )
    assert summary["record"]["scores"]["ood_acc"] == pytest.approx(
        [h.value for h in sorted(hist, key=lambda h: h.step)]
    )


def test_tracking_run_name_names_the_run_and_the_paradigm_stays_a_tag(outputs):
    train.run(compose([*FAST, "regime=target_only", "tracking.run_name=first-try"], outputs))
    train.run(compose([*FAST, "regime=target_only"], outputs))
    _, found = runs(outputs)
    assert sorted(r.info.run_name for r in found) == ["first-try", "target_only+full"]
    assert {r.data.tags["freeze"] for r in found} == {"full"}
