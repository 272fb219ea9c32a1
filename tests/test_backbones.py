"""The backbone as a searched dimension and the pre-ranking before training (issue 22 items 1,
2, 7): a real two-backbone sweep through the entrypoint (timm's tiny test ResNet and ViT), the
transferability scores against independent computations, and the early errors."""

from __future__ import annotations

import csv
import math
import re

import numpy as np
import pytest

from conftest import child_runs, cli, compose, load_study, runs, sweep_parent
from transfersweep.errors import ConfigError
from transfersweep.sweep import prerank

BASE = [
    "-m",
    "sweep=paradigm",
    "search.backbones=[tiny,tiny_vit]",
    "data.image_size=16",
    "trainer.target_epochs=1",
    "trainer.device=cpu",
    "trainer.threads=1",
    "regime=target_only",
    "search.strategies=[last_layer,full]",
]


def _sweep(out, *more: str) -> str:
    """A sweep over the two tiny backbones into `out`; its log."""
    res = cli([*BASE, *more, f"paths.outputs={out}"], cwd=out)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("backbones")
    log = _sweep(
        out, "trainer.repeats=3", "hydra.sweeper.n_trials=4",
        "hydra.sweeper.confirm.top_k=2", "hydra.sweeper.confirm.repeats=3",
    )  # fmt: skip
    return out, log


def test_each_backbone_is_ranked_then_its_default_runs_first_in_rank_order(swept):
    out, log = swept
    study = load_study(out, "digits-tiny+tiny_vit")  # the default name lists the backbones
    ranking = prerank.Ranking.from_dict(study.user_attrs[prerank.ATTR])
    order = [s.backbone for s in ranking.scores]
    assert sorted(order) == ["tiny", "tiny_vit"]
    knn = [s.knn for s in ranking.scores]
    assert knn == sorted(knn, reverse=True)  # ordered by kNN (search.prerank.score)
    assert all(s.draws == 3 and s.n_images == 25 for s in ranking.scores)  # the repeats' draws
    assert any(s.knn_sd > 0 for s in ranking.scores)  # the draws differ
    first, second = study.trials[:2]
    assert first.user_attrs["default"] and second.user_attrs["default"]
    assert [first.params["backbone"], second.params["backbone"]] == order
    for t in (first, second):  # the config's paradigm, at the backbone's own optimizer lr
        assert t.params["freeze"] == "full" and t.params["optimizer.lr"] == 1e-3
    assert not any(t.user_attrs.get("default") for t in study.trials[2:])
    assert "trial 1 is the default: optimizer.lr=0.001, freeze=full, backbone=" in log


def test_every_trial_trains_its_backbone_and_is_named_after_it(swept):
    out, _ = swept
    client, found = runs(out)
    parent = sweep_parent(found)
    trials = child_runs(found, parent)
    timm_name = {"tiny": "test_resnet", "tiny_vit": "test_vit"}
    assert {r.data.params["backbone.name"] for r in trials} == set(timm_name.values())
    for r in trials:
        entry = r.data.tags["paradigm"].split("/", 1)[0]
        assert r.data.tags["backbone"] == timm_name[entry]
        assert r.data.params["backbone.name"] == timm_name[entry]


def test_table_csv_and_verdict_are_per_backbone_and_the_champion_records_it(swept):
    out, log = swept
    client, found = runs(out)
    parent = sweep_parent(found)
    pid = parent.info.run_id
    table = client.download_artifacts(pid, "summary/paradigm_table.md", str(out / "dl1"))
    text = open(table).read()
    assert "| backbone/regime \\ freeze |" in text
    rows = {line.split("|")[1].strip() for line in text.splitlines() if "/target_only |" in line}
    assert rows == {"tiny/target_only", "tiny_vit/target_only"}
    path = client.download_artifacts(pid, "summary/paradigm_table.csv", str(out / "dl2"))
    with open(path) as fh:
        got = list(csv.DictReader(fh))
    assert {r["backbone"] for r in got} == {"tiny", "tiny_vit"}
    assert all(r["paradigm"].startswith(r["backbone"] + "/") for r in got)
    verdict = parent.data.tags["verdict"]
    assert re.match(r"(tiny|tiny_vit)/target_only\+(last_layer|full)", verdict)
    assert "the default (tiny/target_only+full)" in verdict
    assert "the default (tiny_vit/target_only+full)" in verdict
    winner = parent.data.tags["best_paradigm"]
    mv = client.get_model_version_by_alias("digits-tiny+tiny_vit", "champion")
    assert mv.tags["paradigm"] == winner
    assert (
        mv.tags["backbone"] == {"tiny": "test_resnet", "tiny_vit": "test_vit"}[winner.split("/")[0]]
    )


def test_the_prerank_is_logged_on_the_parent_beside_the_measured_ranking(swept):
    out, _ = swept
    client, found = runs(out)
    parent = sweep_parent(found)
    m = parent.data.metrics
    for b in ("tiny", "tiny_vit"):
        assert 0.0 <= m[f"prerank_knn_{b}"] <= 1.0
        assert math.isfinite(m[f"prerank_logme_{b}"])
    assert "prerank_tau_knn" in m and "prerank_tau_logme" in m
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "prerank")}
    assert names == {"prerank/prerank.csv", "prerank/prerank.md", "prerank/prerank.png"}
    path = client.download_artifacts(parent.info.run_id, "prerank/prerank.csv", str(out / "dl3"))
    with open(path) as fh:
        got = list(csv.DictReader(fh))
    assert {r["backbone"] for r in got} == {"tiny", "tiny_vit"}
    assert all(float(r["knn_seconds"]) >= 0 and float(r["features_seconds"]) > 0 for r in got)
    note = parent.data.tags["mlflow.note.content"]
    assert "Pre-ranking of the backbones" in note
    assert re.search(r"Kendall's tau against the measured ranking \(n=2 backbones\)", note)


@pytest.mark.slow
def test_keep_one_drops_the_other_backbone_before_any_training(tmp_path):
    log = _sweep(
        tmp_path, "search.prerank.keep=1", "trainer.repeats=2", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.confirm.top_k=0",
    )  # fmt: skip
    study = load_study(tmp_path, "digits-tiny+tiny_vit")
    ranking = prerank.Ranking.from_dict(study.user_attrs[prerank.ATTR])
    best, dropped = ranking.scores[0].backbone, ranking.scores[1].backbone
    assert ranking.kept == [best] and ranking.dropped == [dropped]
    assert f"dropped before training: {dropped}" in log
    client, found = runs(tmp_path)
    trials = child_runs(found, sweep_parent(found))
    assert len(trials) == 2
    assert all(r.data.tags["paradigm"].startswith(f"{best}/") for r in trials)


# --- the scores, against independent computations ---


def test_knn_leave_one_out_matches_scikit_learn():
    from sklearn.model_selection import LeaveOneOut, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    for k in (1, 3, 5):
        x = rng.normal(size=(60, 8))
        y = rng.integers(0, 3, 60)
        x[:, 0] += y  # some signal
        ref = cross_val_score(KNeighborsClassifier(k, metric="cosine"), x, y, cv=LeaveOneOut())
        assert prerank.knn_loo(x, y, k) == pytest.approx(ref.mean())


@pytest.mark.parametrize("shape", [(40, 10), (6, 20)])  # more images than features, and fewer
def test_logme_evidence_is_the_gaussian_marginal_likelihood_at_its_maximum(shape):
    """By hand: y ~ N(0, I/beta + F F^T/alpha) is the model's marginal likelihood; the value
    returned must be its log density per image, at alpha and beta that maximise it (these
    data have an interior maximum; without signal it lies at alpha -> infinity)."""
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(1)
    n, _ = shape
    f = rng.normal(size=shape)
    y = (f[:, 0] > 0).astype(float)
    e = prerank.evidence(f, y)

    def by_hand(alpha: float, beta: float) -> float:
        cov = np.eye(n) / beta + f @ f.T / alpha
        return multivariate_normal(np.zeros(n), cov).logpdf(y) / n

    assert e.value == pytest.approx(by_hand(e.alpha, e.beta), abs=1e-9)
    for a, b in ((0.8, 1), (1.25, 1), (1, 0.8), (1, 1.25)):
        assert by_hand(e.alpha * a, e.beta * b) < e.value


def test_logme_prefers_features_that_separate_the_classes():
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(4), 15)
    noise = rng.normal(size=(60, 16))
    good = noise + 3 * np.eye(16)[y]
    assert prerank.logme(good, y) > prerank.logme(noise, y)
    assert prerank.knn_loo(good, y, 5) > prerank.knn_loo(noise, y, 5)


# --- early errors, before anything trains ---


def test_bad_backbone_lists_and_prerank_settings_are_named():
    from transfersweep.sweep import backbones

    with pytest.raises(ConfigError, match="names a backbone twice"):
        backbones.entries(compose(["search.backbones=[tiny,tiny]"]))
    assert backbones.entries(compose(["search.backbones=[tiny]"])) == []  # one: no dimension
    cfg = compose(["search.backbones=[tiny,tiny_vit]", "search.prerank.keep=3"])
    with pytest.raises(ConfigError, match=r"keep=3 but search.backbones has 2"):
        prerank.check(cfg.search.prerank, 2)
    with pytest.raises(ConfigError, match="search.prerank.score='acc'"):
        prerank.check(compose(["search.prerank.score=acc"]).search.prerank, 2)
    with pytest.raises(ConfigError, match="'resnet_nope' is neither a preset"):
        backbones.check_names(["tiny", "resnet_nope"], ["tiny", "lite0"])
    assert backbones.overrides("lite0", ["lite0"]) == ("backbone=lite0",)
    assert backbones.overrides("convnext_atto.d2_in1k", ["lite0"]) == (
        "backbone=timm",
        "backbone.name=convnext_atto.d2_in1k",
    )


def test_a_backbone_that_fails_on_the_images_stops_the_sweep_before_training(tmp_path):
    res = cli(
        [*BASE[:2], "search.backbones=[tiny,convnext_atto]", *BASE[3:],
         "hydra.sweeper.n_trials=2", f"paths.outputs={tmp_path}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    err = res.stdout + res.stderr
    assert "search.backbones: convnext_atto failed on the target images before any training" in err
    assert "Traceback" not in err
    client, found = runs(tmp_path)
    assert found == []  # nothing logged, nothing left RUNNING


def test_pretrain_reuse_keys_on_the_backbone():
    from transfersweep import reuse

    a = compose(["backbone=tiny", "data.image_size=16"])
    b = compose(["backbone=tiny_vit", "data.image_size=16"])
    assert reuse.key(a, 0, "fp32") != reuse.key(b, 0, "fp32")
    assert reuse.key(a, 0, "fp32") == reuse.key(
        compose(["backbone=tiny", "data.image_size=16"]), 0, "fp32"
    )


def test_the_lr_dimension_covers_every_backbones_optimizer_preset():
    from transfersweep.sweep import space

    shaped = space.Shaped(["data=digits"], {"optimizer.lr": "tag(log, interval(0.0003, 0.003))"})
    got = space.with_backbones(shaped, ["lite0", "tiny"], ["lite0", "tiny"], compose)
    assert (
        got.params["optimizer.lr"] == "tag(log, interval(3e-05, 0.003))"
    )  # adamw_pretrained + adamw
    assert got.arguments == ["data=digits", "backbone=choice(lite0,tiny)"]
    assert got.backbones == ["lite0", "tiny"]
    mine = space.with_backbones(
        space.Shaped(["optimizer.lr=0.001"], dict(shaped.params)),
        ["lite0", "tiny"],
        ["lite0"],
        compose,
    )
    assert (
        mine.params["optimizer.lr"] == shaped.params["optimizer.lr"]
    )  # the command line's lr stays
    with pytest.raises(ConfigError, match="give one"):
        space.refuse_fixed_backbone(["backbone=lite0"], ["lite0", "tiny"])
