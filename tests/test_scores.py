"""Scores by name: the metrics against scikit-learn's, the Record's one format, and the
objective (trainer.objective) driving a run end to end."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from conftest import FAST, cli, compose, runs
from transfersweep import scores
from transfersweep.scores import Record


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", range(5))
def test_metrics_are_scikit_learns(seed):
    g = torch.Generator().manual_seed(seed)
    n_classes = 5
    target = torch.randint(0, n_classes - 1, (60,), generator=g)  # class 4 never true
    pred = torch.where(torch.rand(60, generator=g) < 0.6, target, torch.randint(0, 5, (60,)))
    got = scores.of_confusion(scores.confusion(pred, target, n_classes))
    assert got["acc"] == pytest.approx(accuracy_score(target, pred))
    assert got["balanced_acc"] == pytest.approx(balanced_accuracy_score(target, pred))
    assert got["macro_f1"] == pytest.approx(f1_score(target, pred, average="macro"))


def test_record_round_trips_and_estimates():
    r = Record([0, 1, 2], ["a", "b", "c"], [1.0, 2.0, 3.0], {"val_acc": [0.5, 0.6, 0.7]})
    assert Record.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert r.values("val_acc") == {0: 0.5, 1: 0.6, 2: 0.7}
    assert r.estimate("val_acc").mean == pytest.approx(0.6) and r.estimate("test_acc") is None
    assert Record.from_dict(None) is None and Record.from_dict({}) is None


def test_an_unknown_objective_is_refused_before_anything_runs(tmp_path):
    for args in ([], ["-m", "sweep=paradigm"]):
        res = cli(
            [*args, *FAST, "trainer.objective=val_f1", f"paths.outputs={tmp_path}"], cwd=tmp_path
        )
        assert res.returncode == 2, res.stderr[-2000:]
        out = res.stdout + res.stderr
        assert "trainer.objective=val_f1 is not a known objective" in out
        assert "val_acc, val_balanced_acc, val_macro_f1" in out
    assert not (tmp_path / "mlflow.db").exists() or not runs(tmp_path)[1]  # nothing logged


def test_the_objective_picks_the_best_epoch_and_is_what_the_run_returns(outputs):
    from transfersweep import train

    args = [*FAST, "regime=target_only", "trainer.repeats=2", "trainer.target_epochs=4"]
    value = train.run(compose([*args, "trainer.objective=val_macro_f1"], outputs))
    client, (r,) = runs(outputs)
    record = json.load(open(client.download_artifacts(r.info.run_id, "summary.json", str(outputs))))
    assert record["objective"] == "val_macro_f1"
    f1 = record["record"]["scores"]["val_macro_f1"]
    assert value == pytest.approx(sum(f1) / 2)  # the mean of the objective over the repeats
    assert set(record["record"]["scores"]) == {
        f"{split}_{m}" for split in ("val", "test") for m in scores.METRICS
    }
    # each stage's best epoch is its best val macro-F1 (first of equals), not its best accuracy
    for prefix, repeat_f1 in zip(("target", "target_r1"), f1, strict=True):
        per_epoch = {
            h.step: h.value
            for h in client.get_metric_history(r.info.run_id, f"{prefix}/val_macro_f1")
        }
        best = max(per_epoch, key=lambda e: (per_epoch[e], -e))
        assert r.data.metrics[f"{prefix}/best_epoch"] == best
        assert r.data.metrics[f"{prefix}/best_val_macro_f1"] == pytest.approx(per_epoch[best])
        assert repeat_f1 == pytest.approx(per_epoch[best])  # the record scores those weights


@pytest.mark.slow
def test_a_sweep_ranks_reports_and_registers_by_the_objective(tmp_path):
    import optuna

    from conftest import sweep_parent

    res = cli(
        ["-m", "sweep=grid", *FAST, "trainer.objective=val_balanced_acc", "trainer.repeats=3",
         "regime=target_only", "search.strategies=[last_layer,full]",
         "hydra.sweeper.study_name=bal", f"paths.outputs={tmp_path}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    study = optuna.load_study(study_name="bal", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    means = {}
    for t in study.trials:
        record = Record.from_dict(t.user_attrs["record"])
        assert t.value == pytest.approx(record.estimate("val_balanced_acc").mean)  # Optuna's
        means[t.user_attrs["paradigm"]["strategy"]] = t.value
    client, found = runs(tmp_path)
    parent = sweep_parent(found)
    page = parent.data.tags["mlflow.note.content"]
    assert "Target val_balanced_acc of each paradigm's best trial" in page
    assert "test_balanced_acc of the same trial" in page
    best = max(means, key=means.get)
    assert parent.data.tags["verdict"].startswith(f"target_only+{best}")
    assert parent.data.metrics["search_best_val_balanced_acc"] == pytest.approx(means[best])
    assert "val_balanced_acc" in res.stdout + res.stderr  # the progress lines name it
    version = client.get_model_version("bal", "1")
    assert version.tags["objective"] == "val_balanced_acc"
    assert float(version.tags["val_balanced_acc"]) == pytest.approx(means[best], abs=1e-4)


def test_a_held_out_shifted_val_set_can_be_the_objective_apart_from_the_ood_test_set(outputs):
    from transfersweep import data as data_mod
    from transfersweep import train

    base = [*FAST, "regime=target_only", "data.target.ood=invert"]
    cfg = compose([*base, "data.target.ood_val=true"], outputs)
    target = data_mod.build(cfg, need_source=False).target
    # a shift: the shifted val split beside the shifted test split (never a test image)
    assert torch.equal(target.ood_val.labels, target.val.labels)
    assert torch.equal(target.ood_val.images, 255 - target.val.images)
    assert torch.equal(target.ood.images, 255 - target.test.images)

    value = train.run(compose([*base, "data.target.ood_val=true",
                               "trainer.objective=ood_val_acc", "trainer.repeats=2"], outputs))  # fmt: skip
    client, (r,) = runs(outputs)
    summary = json.load(
        open(client.download_artifacts(r.info.run_id, "summary.json", str(outputs)))
    )
    got = summary["record"]["scores"]
    assert {"ood_val_acc", "ood_val_macro_f1", "ood_acc", "val_acc"} <= set(got)
    assert value == pytest.approx(sum(got["ood_val_acc"]) / 2)  # the run's objective
    assert r.data.metrics["ood_val_acc"] == pytest.approx(value)
    assert "target/best_val_acc" in r.data.metrics  # epochs are still chosen in distribution


def test_another_set_is_halved_into_a_shifted_val_set_and_the_ood_test_set(outputs):
    from transfersweep import data as data_mod

    args = [*FAST, "data=mnist", "data.target.ood=digits"]
    whole = data_mod.build(compose(args, outputs), need_source=False).target.ood
    target = data_mod.build(compose([*args, "data.target.ood_val=true"], outputs), False).target
    assert len(target.ood_val) + len(target.ood) == len(whole)
    for c in whole.labels.unique():  # stratified: each class split in half
        n = int((whole.labels == c).sum())
        assert int((target.ood_val.labels == c).sum()) == n // 2

    def images(s):
        return Counter(x.numpy().tobytes() for x in s.images)

    assert images(target.ood_val) + images(target.ood) == images(whole)  # disjoint halves


@pytest.mark.parametrize(
    "args, message",
    [
        (["trainer.objective=ood_val_acc"], "data.target.ood_val=true"),
        (["trainer.objective=ood_val_acc", "data.target.ood=invert"], "data.target.ood_val=true"),
        (["data.source.ood_val=true"], "use data.target.ood_val"),
    ],
)
def test_a_shifted_val_objective_without_its_set_is_refused(args, message, outputs):
    from transfersweep import train
    from transfersweep.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        train.run(compose([*FAST, *args], outputs))


def test_studies_and_runs_recorded_before_records_still_read():
    """A study resumed after an upgrade keeps its trials' results (they stored per-repeat
    lists, and summary.json a list of repeats, before the Record)."""
    old_trial = {"repeat_index": [0, 1], "repeat_val": [0.5, 0.7], "repeat_test": [0.4, 0.6],
                 "repeat_draw": ["a", "b"]}  # fmt: skip
    r = Record.of_trial(old_trial)
    assert r.values("val_acc") == {0: 0.5, 1: 0.7} and r.draw == ["a", "b"]
    assert r.estimate("test_acc").mean == pytest.approx(0.5)
    old_summary = {"repeats": [
        {"index": 3, "draw": "x", "val_acc": 0.9, "test_acc": 0.8, "ood_acc": None, "seconds": 2.0},
        {"index": 4, "draw": "y", "val_acc": 0.7, "test_acc": 0.6, "ood_acc": None, "seconds": 4.0},
    ]}  # fmt: skip
    r = Record.of_summary(old_summary)
    assert (
        r.index == [3, 4] and r.seconds == [2.0, 4.0] and set(r.scores) == {"val_acc", "test_acc"}
    )
    new = Record([0], scores={"val_acc": [1.0]})
    assert Record.of_trial({"record": new.to_dict()}) == new
    assert Record.of_summary({"record": new.to_dict()}) == new
    assert Record.of_trial({}) is None  # a failed trial scored nothing
