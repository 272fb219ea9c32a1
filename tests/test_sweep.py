"""Real multirun sweeps: Optuna study on SQLite, MLflow parent + nested children, summary, resume, failures."""

from __future__ import annotations

import os
import re

import optuna
import pytest

from conftest import child_runs, cli, load_study, runs, sweep_parent
from transfersweep.scores import Record

FAST_SWEEP = [
    "backbone=tiny",
    "data.image_size=16",
    "trainer.source_epochs=1",
    "trainer.target_epochs=1",
    "trainer.device=cpu",
    "trainer.threads=1",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    args = [
        "-m",
        "sweep=paradigm",
        *FAST_SWEEP,
        "trainer.repeats=3",
        "search.freeze.last_blocks.n_blocks=[2,3]",  # narrows the strategy's declared 1..3
        "search.strategies=[last_layer,last_blocks,full]",  # the seeds' three of every strategy
        "hydra.sweeper.n_trials=5",
        "hydra.sweeper.sampler.seed=3",  # after the default, TPE draws every strategy (and target_only)
        "hydra.sweeper.study_name=t",
        "hydra.sweeper.confirm.top_k=3",
        "hydra.sweeper.confirm.repeats=3",
        f"paths.outputs={out}",
    ]
    res = cli(args, cwd=out)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, res, args


def test_study_holds_the_trials_with_paradigm_params(sweep):
    out, _, _ = sweep
    study = load_study(out, "t")
    assert len(study.trials) == 5
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    for t in study.trials:
        assert t.params["regime"] in {"pretrain_finetune", "joint", "pretrain_joint", "target_only"}
        assert t.distributions["freeze"].choices == ("last_layer", "last_blocks", "full")
        assert ("freeze.n_blocks" in t.params) == (
            t.params["freeze"] == "last_blocks"
        )  # conditional
        assert t.params.get("freeze.n_blocks", 2) in (2, 3)  # over the narrowed range
        assert 3e-4 <= t.params["optimizer.lr"] <= 3e-3
        paradigm = t.user_attrs["paradigm"]  # the job's Paradigm value, as a dict
        assert t.user_attrs["run_id"] and paradigm["regime"] == t.params["regime"]
        assert paradigm["strategy"] == t.params["freeze"]
        assert paradigm["params"] == (
            {"n_blocks": t.params["freeze.n_blocks"]} if t.params["freeze"] == "last_blocks" else {}
        )
        record = Record.from_dict(t.user_attrs["record"])
        assert t.value == pytest.approx(record.estimate("val_acc").mean)
        assert t.user_attrs["repeats"] == 3 == record.n and record.estimate("val_acc").ci95
    assert any(t.params["freeze"] == "last_blocks" for t in study.trials)  # (seed 3 draws it)


def test_mlflow_parent_with_nested_tagged_children_and_summary(sweep):
    out, _, _ = sweep
    client, found = runs(out)
    parent = sweep_parent(found)
    assert parent.info.status == "FINISHED" and parent.data.tags["study"] == "t"
    assert "regime" in parent.data.params["search_space"]
    children = child_runs(found, parent)
    assert len(children) == 5 and all(c.info.status == "FINISHED" for c in children)
    study = load_study(out, "t")
    by_trial = {int(c.data.tags["trial"]): c for c in children}
    assert set(by_trial) == {t.number for t in study.trials}
    for t in study.trials:
        c = by_trial[t.number]
        assert c.info.run_id == t.user_attrs["run_id"]
        assert (
            c.data.tags["regime"] == t.params["regime"]
            and c.data.tags["freeze"] == t.params["freeze"]
        )
        assert c.data.tags["backbone"] == "test_resnet" and c.data.params["trial.number"] == str(
            t.number
        )
    summary = {a.path.split("/")[-1] for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert {
        "paradigm_table.md",
        "paradigm_table.csv",
        "paradigm_heatmap.png",
        "optimization_history.png",
        "trials.csv",
    } <= summary
    assert parent.data.metrics["search_best_val_acc"] == pytest.approx(study.best_value)
    # the winner of the confirmation runs: one of them, and the best of them
    confirms = child_runs(found, parent, confirm=True)
    top = max(confirms, key=lambda c: c.data.metrics["val_acc"])
    assert parent.data.metrics["best_val_acc"] == pytest.approx(top.data.metrics["val_acc"])
    assert parent.data.tags["best_run_id"] == top.info.run_id
    assert parent.data.tags["best_trial"] == top.data.tags["confirms_trial"]
    table = open(
        client.download_artifacts(parent.info.run_id, "summary/paradigm_table.md", str(out))
    ).read()
    assert "| regime \\ freeze | last_layer | last_blocks | full |" in table
    assert f"#{study.best_trial.number}" in table
    assert " ± " in table and "n=3" in table  # mean ± CI half-width over trainer.repeats=3
    verdict = parent.data.tags["verdict"]
    assert "**Verdict**: " + verdict in parent.data.tags["mlflow.note.content"]  # run page
    assert table in parent.data.tags["mlflow.note.content"]


def test_repeats_are_paired_draws_identical_across_trials(sweep):
    out, _, _ = sweep
    records = [Record.from_dict(t.user_attrs["record"]) for t in load_study(out, "t").trials]
    assert all(r.draw == records[0].draw for r in records)  # repeat r: the same k-shot images
    assert len(set(records[0].draw)) == 3  # and a different draw per repeat
    assert all(r.index == [0, 1, 2] for r in records)


def test_confirmation_reruns_the_top_paradigms_on_fresh_repeats(sweep):
    out, res, _ = sweep
    client, found = runs(out)
    parent = sweep_parent(found)
    study = load_study(out, "t")
    best = {}  # best trial per paradigm cell, as the summary picks it
    for t in study.trials:
        cell = (t.params["regime"], t.params["freeze"])
        if cell not in best or t.value > best[cell].value:
            best[cell] = t
    top = sorted(best.values(), key=lambda t: (-t.value, t.number))[:3]
    confirms = child_runs(found, parent, confirm=True)
    assert sorted(int(c.data.tags["confirms_trial"]) for c in confirms) == sorted(
        t.number for t in top
    )
    search_draws = set(study.trials[0].user_attrs["record"]["draw"])
    import json

    for c in confirms:
        t = study.trials[int(c.data.tags["confirms_trial"])]
        assert c.info.status == "FINISHED" and c.data.params["trainer.first_repeat"] == "1000"
        assert c.data.params["optimizer.lr"] == str(t.params["optimizer.lr"])  # same configuration
        assert (c.data.tags["regime"], c.data.tags["freeze"]) == (
            t.params["regime"],
            t.params["freeze"],
        )
        steps = sorted(h.step for h in client.get_metric_history(c.info.run_id, "repeat/val_acc"))
        assert steps == [1000, 1001, 1002]  # fresh repeats: never used by the search
        summary = client.download_artifacts(c.info.run_id, "summary.json", str(out / c.info.run_id))
        draws = set(json.load(open(summary))["record"]["draw"])
        assert len(draws) == 3 and not draws & search_draws
    assert (
        "confirmation: the best configuration of the top 3 paradigm(s)" in res.stdout + res.stderr
    )
    assert "in the confirmation runs" in parent.data.tags["verdict"]
    assert "Confirmation:" in parent.data.tags["mlflow.note.content"]


def test_verdict_p_values_match_a_paired_t_test_on_the_logged_repeats(sweep):
    import csv

    from scipy.stats import ttest_rel

    out, res, _ = sweep
    client, found = runs(out)
    parent = sweep_parent(found)
    path = client.download_artifacts(parent.info.run_id, "summary/confirmation.csv", str(out))
    table = list(csv.DictReader(open(path)))  # the verdict is the confirmation runs'
    assert len(table) == 3
    (winner,) = [r for r in table if r["verdict"] == "winner"]
    assert float(winner["val_acc"]) == max(float(r["val_acc"]) for r in table)

    def repeat_vals(run_id):  # as logged in MLflow, step = repeat index
        hist = client.get_metric_history(run_id, "repeat/val_acc")
        return [h.value for h in sorted(hist, key=lambda h: h.step)]

    others = [r for r in table if r["verdict"] != "winner"]
    raw = []
    for r in others:
        a, b = repeat_vals(winner["run_id"]), repeat_vals(r["run_id"])
        d = [x - y for x, y in zip(a, b, strict=True)]
        p = 1.0 if all(x == 0 for x in d) else ttest_rel(a, b).pvalue
        if all(x == d[0] for x in d) and d[0] != 0:
            p = 0.0
        assert float(r["p_value"]) == pytest.approx(p, abs=1e-9)
        raw.append(p)
    # Holm by hand: sorted p's times (m, m-1, ...), running maximum, capped at 1
    m, running, holm = len(raw), 0.0, {}
    for rank, i in enumerate(sorted(range(m), key=lambda i: raw[i])):
        running = max(running, min(1.0, (m - rank) * raw[i]))
        holm[i] = running
    for i, r in enumerate(others):
        assert float(r["p_holm"]) == pytest.approx(holm[i], abs=1e-9)
        assert r["verdict"] == ("worse" if holm[i] < 0.05 else "tied")
    last = [line for line in res.stdout.splitlines() + res.stderr.splitlines() if "verdict" in line]
    assert parent.data.tags["verdict"] in last[-1]


def test_progress_line_per_trial(sweep):
    _, res, _ = sweep
    log = res.stdout + res.stderr
    for k in range(1, 6):
        assert f"trial {k}/5 [#{k - 1}]" in log
    assert "-> val_acc" in log and "| best " in log


def test_the_default_runs_first_and_the_verdict_says_where_it_ended(sweep):
    out, res, _ = sweep
    study = load_study(out, "t")
    first = study.trials[0]
    # the paradigm and values of a plain run of the same command (conf/train.yaml, optimizer=adamw)
    assert first.user_attrs["default"] is True
    assert first.params == {"regime": "pretrain_finetune", "freeze": "full", "optimizer.lr": 1e-3}
    assert not any(t.user_attrs.get("default") for t in study.trials[1:])  # drawn by TPE
    log = res.stdout + res.stderr
    assert (
        "trial 1 is the default: regime=pretrain_finetune, optimizer.lr=0.001, freeze=full" in log
    )
    verdict = next(ln for ln in log.splitlines() if "verdict (study 't')" in ln)
    assert re.search(r"; the default \(pretrain_finetune\+full\) is (the winner|tied with the "
                     r"winner|worse|untested against the winner)", verdict), verdict  # fmt: skip


def test_a_time_budget_stops_the_search_and_the_verdict_says_what_it_allowed(tmp_path):
    args = ["-m", "sweep=paradigm", *FAST_SWEEP, "trainer.repeats=2", "hydra.sweeper.n_trials=50",
            "hydra.sweeper.time_budget=12s", "hydra.sweeper.confirm.top_k=2",
            "hydra.sweeper.confirm.repeats=4", "hydra.sweeper.study_name=budget",
            f"paths.outputs={tmp_path}"]  # fmt: skip
    res = cli(args, cwd=tmp_path)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    study = load_study(tmp_path, "budget")
    n = len(study.trials)
    assert n < 50, n  # 1-5 s trials: the budget, not n_trials, ended the search
    starts = sorted(t.datetime_start for t in study.trials)
    assert (starts[-1] - starts[0]).total_seconds() <= 12  # none started past the budget
    assert "time budget 12s: no new trial" in log
    verdict = next(ln for ln in log.splitlines() if "verdict (study 'budget')" in ln)
    # 2 paradigms x 4 repeats do not fit in less than one 2-repeat trial's time: cut, said so
    assert f"The time budget (12s) allowed {n} of 50 trials; confirmation cut (about" in verdict
    assert "in the confirmation runs" not in verdict


@pytest.mark.parametrize(
    "given,seconds", [(90, 90.0), ("90s", 90.0), ("30m", 1800.0), ("1.5h", 5400.0),
                      ("1h30m", 5400.0), (None, None)],
)  # fmt: skip
def test_time_budgets_read_as_people_write_them(given, seconds):
    from transfersweep.sweep import budget

    assert budget.parse(given) == seconds


@pytest.mark.parametrize("given", ["soon", "0", "-5m", "30 minutes"])
def test_a_bad_time_budget_is_named_before_any_trial(given):
    from transfersweep.errors import ConfigError
    from transfersweep.sweep import budget

    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.time_budget="):
        budget.parse(given)


def test_the_default_is_what_a_plain_run_trains_within_the_space():
    from conftest import compose
    from transfersweep import strategies
    from transfersweep.sweep import default
    from transfersweep.sweep.hydra_optuna import SearchSpace

    d = optuna.distributions
    space = SearchSpace(
        {
            "regime": d.CategoricalDistribution(["joint", "target_only"]),
            "freeze": d.CategoricalDistribution(["last_blocks", "full"]),
            "optimizer.lr": d.FloatDistribution(3e-4, 3e-3, log=True),
            "freeze.n_blocks": d.IntDistribution(1, 3),
        },
        {}, [], False,
    )  # fmt: skip
    strategy_of = lambda option: strategies.get(option)  # noqa: E731
    # the config's regime is not in the space (no source set): target_only, as make train does
    got = default.params(compose(FAST_SWEEP), space, strategy_of)
    assert got == {"regime": "target_only", "freeze": "full", "optimizer.lr": 1e-3}
    # a value outside its dimension is left to the sampler; the strategy's own keys come along
    cfg = compose([*FAST_SWEEP, "freeze=last_blocks", "freeze.n_blocks=2", "optimizer.lr=1"])
    got = default.params(cfg, space, strategy_of)
    assert got == {"regime": "target_only", "freeze": "last_blocks", "freeze.n_blocks": 2}


@pytest.mark.slow
def test_same_study_name_resumes_and_adds_trials(sweep):
    out, _, args = sweep
    again = cli(args, cwd=out)  # n_trials is the study's total: the same command runs nothing more
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 trial(s) to run (n_trials=5 is the study's total, 5 already" in again.stdout
    assert len(load_study(out, "t").trials) == 5
    res = cli([*args, "hydra.sweeper.n_trials=7"], cwd=out)  # the later override wins
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 trial(s) to run (n_trials=7 is the study's total, 5 already" in res.stdout
    assert "trial 7/7 [#6]" in res.stdout
    study = load_study(out, "t")
    assert len(study.trials) == 7 and len({t.number for t in study.trials}) == 7
    _, found = runs(out)
    parent = sweep_parent(found)  # the study's parent run is reopened, not duplicated
    assert len(child_runs(found, parent)) == 7


@pytest.mark.slow
def test_failing_trial_does_not_stop_the_sweep(tmp_path):
    """Grid over freeze with n_blocks=9: the last_blocks cell fails, the other two finish."""
    args = [
        "-m",
        "sweep=grid",
        *FAST_SWEEP,
        "regime=target_only",
        "freeze.n_blocks=9",
        f"paths.outputs={tmp_path}",
    ]
    res = cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    study = load_study(tmp_path, "grid-digits-test_resnet")
    states = {t.params["freeze"]: t.state for t in study.trials}
    assert states == {
        "last_layer": optuna.trial.TrialState.COMPLETE,
        "last_blocks": optuna.trial.TrialState.FAIL,
        "full": optuna.trial.TrialState.COMPLETE,
    }
    failed = next(t for t in study.trials if t.state == optuna.trial.TrialState.FAIL)
    assert "freeze.n_blocks=9 is out of range" in failed.user_attrs["error"]
    _, found = runs(tmp_path)
    child = next(r for r in found if r.data.tags.get("trial") == str(failed.number))
    assert (
        child.info.status == "FAILED"
        and "freeze.n_blocks=9 is out of range" in child.data.tags["error"]
    )
    assert "FAILED: ConfigError: freeze.n_blocks=9" in res.stdout + res.stderr
    assert not any(r.info.status == "RUNNING" for r in found)


@pytest.mark.slow
def test_sweep_where_every_trial_fails_ends_with_a_clear_message(tmp_path):
    args = [
        "-m",
        "sweep=grid",
        *FAST_SWEEP,
        "regime=target_only",
        "backbone.name=resnet181",
        f"paths.outputs={tmp_path}",
    ]
    res = cli(args, cwd=tmp_path)
    log = res.stdout + res.stderr
    assert res.returncode == 1
    assert "no trial succeeded (3 failed, 0 pruned)" in log and "resnet181" in log
    assert "Traceback" not in log
    _, found = runs(tmp_path)
    assert found and not any(r.info.status == "RUNNING" for r in found)


@pytest.mark.slow
def test_pruned_trial_is_pruned_in_optuna_and_tagged_in_mlflow(tmp_path):
    """ThresholdPruner makes the outcome certain: threshold 0.99 prunes at epoch 1, 0.0 never does."""
    args = [
        "-m",
        "sweep=grid",
        *FAST_SWEEP,
        "regime=target_only",
        "freeze=full",
        "trainer.target_epochs=3",
        "pruner.name=threshold",
        "pruner.n_warmup_steps=0",
        "pruner.threshold=0.0,0.99",
        f"paths.outputs={tmp_path}",
    ]
    res = cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    study = load_study(tmp_path, "grid-digits-test_resnet")
    states = {t.params["pruner.threshold"]: t for t in study.trials}
    assert states[0.0].state == optuna.trial.TrialState.COMPLETE
    assert sorted(states[0.0].intermediate_values) == [1, 2, 3]  # every epoch reported
    pruned = states[0.99]
    assert pruned.state == optuna.trial.TrialState.PRUNED and list(pruned.intermediate_values) == [
        1
    ]
    _, found = runs(tmp_path)
    child = next(r for r in found if r.data.tags.get("trial") == str(pruned.number))
    assert child.info.status == "FINISHED" and child.data.tags["pruned"] == "true"
    assert (
        "pruned at epoch 1" in child.data.tags["pruned_reason"] and "error" not in child.data.tags
    )
    parent = sweep_parent(found)
    assert parent.data.metrics["n_pruned"] == 1 and parent.data.metrics["n_complete"] == 1
    assert "PRUNED pruned at epoch 1" in res.stdout + res.stderr


@pytest.mark.slow
def test_parallel_trials_with_the_joblib_launcher(tmp_path):
    args = [
        "-m",
        "sweep=paradigm",
        *[a for a in FAST_SWEEP if not a.startswith("trainer.threads")],
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.confirm.top_k=0",
        f"paths.outputs={tmp_path}",
    ]
    res = cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    study = load_study(tmp_path, "digits-test_resnet")
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    _, found = runs(tmp_path)
    parent = sweep_parent(found)
    children = child_runs(found, parent)
    assert sorted(int(c.data.tags["trial"]) for c in children) == [0, 1, 2, 3]
    assert {c.data.tags["threads"] for c in children} == {str(max(1, (os.cpu_count() or 1) // 2))}
    assert _overlapping(children)  # two trials really ran at once


def _overlapping(found) -> bool:
    """Whether any two MLflow runs were running at the same time (each run spans its job)."""
    spans = sorted((r.info.start_time, r.info.end_time) for r in found)
    return any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))


@pytest.mark.slow
def test_submitit_local_launcher_runs_each_trial_as_its_own_job(tmp_path):
    """hydra/launcher=local: the SLURM launcher's local mode (submitit), 2 trials at once."""
    args = [
        "-m",
        "sweep=paradigm",
        *FAST_SWEEP,
        "hydra/launcher=local",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.confirm.top_k=0",
        f"paths.outputs={tmp_path}",
    ]
    res = cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    study = load_study(tmp_path, "digits-test_resnet")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    jobs = list(tmp_path.glob("sweeps/*/*/.submitit/*/*_result.pkl"))
    assert len(jobs) == 2  # one submitit job (own process, own result) per trial
    _, found = runs(tmp_path)
    trials = [r for r in found if "trial" in r.data.tags]
    assert sorted(r.data.tags["trial"] for r in trials) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in found)
    assert _overlapping(trials)  # the two jobs ran at once


@pytest.mark.slow  # a sweep or download-path test of 10-25 s: in make test, not test-fast
def test_pareto_sweep_is_two_objective_with_its_front_on_the_parent(tmp_path):
    args = [
        "-m", "sweep=pareto", *FAST_SWEEP, "trainer.repeats=2", "hydra.sweeper.n_trials=4",
        "hydra.sweeper.confirm.top_k=0", "hydra.sweeper.register_champion=false",
        f"paths.outputs={tmp_path}",
    ]  # fmt: skip
    res = cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    study = load_study(tmp_path, "digits-test_resnet-pareto")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    for t in study.trials:  # the objectives: val accuracy and the target stages' seconds
        val = Record.from_dict(t.user_attrs["record"]).estimate("val_acc").mean
        assert t.values == pytest.approx([val, t.user_attrs["target_seconds"]])
    client, found = runs(tmp_path)
    parent = sweep_parent(found)
    import csv

    path = client.download_artifacts(parent.info.run_id, "summary/pareto_front.csv", str(tmp_path))
    front = {int(r["trial"]) for r in csv.DictReader(open(path))}
    assert front == {t.number for t in study.best_trials}
    names = {
        a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(parent.info.run_id, "summary")
    }
    assert "pareto_front.png" in names
    assert "Pareto front:" in parent.data.tags["mlflow.note.content"]
    assert "ranking is untested" in parent.data.tags["verdict"]  # 2 repeats: no paired test


def test_objectives_that_do_not_fit_the_directions_exit_early(tmp_path):
    res = cli(
        ["-m", "sweep=pareto", *FAST_SWEEP, "hydra.sweeper.objectives=[val_acc]",
         f"paths.outputs={tmp_path}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 2
    assert "hydra.sweeper.objectives=['val_acc'] does not fit" in res.stdout + res.stderr
    res = cli(
        ["-m", "sweep=pareto", *FAST_SWEEP, "pruner.name=median", f"paths.outputs={tmp_path}"],
        cwd=tmp_path,
    )
    assert (
        res.returncode == 2
        and "Optuna prunes single-objective studies only" in res.stdout + res.stderr
    )


def test_confirmation_must_use_fresh_repeats(tmp_path):
    res = cli(
        ["-m", "sweep=paradigm", *FAST_SWEEP, "trainer.repeats=3",
         "hydra.sweeper.confirm.first_repeat=2", f"paths.outputs={tmp_path}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 2
    assert "confirm.first_repeat=2 reuses the search's repeats 0..2" in res.stdout + res.stderr
    assert not (tmp_path / "optuna.db").exists()  # refused before any study or run exists


@pytest.mark.slow  # a sweep or download-path test of 10-25 s: in make test, not test-fast
def test_paradigm_sweep_searches_every_strategy_with_its_own_keys(tmp_path):
    args = [
        "-m", "sweep=paradigm", *FAST_SWEEP, "regime=target_only", "trainer.target_epochs=3",
        "hydra.sweeper.n_trials=8", "data.target.ood=rotate",
        "hydra.sweeper.confirm.top_k=0", "hydra.sweeper.register_champion=false",
        "pruner.name=none", f"paths.outputs={tmp_path}",
    ]  # fmt: skip
    res = cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    study = load_study(tmp_path, "digits-test_resnet")
    own = {"surgical": {"freeze.block"}, "lp_ft": {"freeze.probe_epochs", "freeze.probe_lr_scale"},
           "gradual": {"freeze.unfreeze_every"}, "lora": {"freeze.rank", "freeze.alpha"},
           "last_blocks": {"freeze.n_blocks"}}  # fmt: skip
    seen = set()
    for t in study.trials:
        assert t.distributions["freeze"].choices == (
            "last_layer", "bitfit", "norm", "lora", "surgical", "last_blocks", "gradual",
            "lp_ft", "full",
        )  # every strategy by default, in catalogue order  # fmt: skip
        f = t.params["freeze"]
        seen.add(f)
        keys = {k for k in t.params if k.startswith("freeze.")}
        assert keys == own.get(f, set()), (f, keys)  # conditional keys
        assert t.state == optuna.trial.TrialState.COMPLETE, t.user_attrs.get("error")
    assert len(seen & set(own)) >= 2, seen  # strategies with keys of their own were sampled
    # ood_acc (data.target.ood) in the paradigm table and both CSVs
    client, found = runs(tmp_path)
    parent = sweep_parent(found)
    import csv

    for name in ("paradigm_table.csv", "trials.csv"):
        path = client.download_artifacts(parent.info.run_id, f"summary/{name}", str(tmp_path))
        rows = list(csv.DictReader(open(path)))
        assert rows and all(0.0 <= float(r["ood_acc"]) <= 1.0 for r in rows)
    assert "; ood 0." in parent.data.tags["mlflow.note.content"]


def test_unknown_strategy_in_search_strategies_exits_early(tmp_path):
    res = cli(
        ["-m", "sweep=paradigm", *FAST_SWEEP, "search.strategies=[full,lorax]",
         f"paths.outputs={tmp_path}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 2
    out = res.stdout + res.stderr
    assert "search.strategies=['full', 'lorax']: 'lorax' is not a freeze option" in out
    assert "[last_layer,bitfit,norm,lora,surgical,last_blocks,gradual,lp_ft,full]" in out
    assert not (tmp_path / "optuna.db").exists()


@pytest.mark.slow  # a sweep or download-path test of 10-25 s: in make test, not test-fast
def test_a_new_study_under_an_old_name_gets_its_own_parent_run(tmp_path):
    """The study records its parent: the same study resumed reopens it, but a study deleted
    and made again under the same name must not adopt the old parent (its confirmation runs
    belong to other trials)."""
    args = ["-m", "sweep=paradigm", *FAST_SWEEP, "hydra.sweeper.n_trials=1",
            "hydra.sweeper.study_name=again", "hydra.sweeper.confirm.top_k=0",
            f"paths.outputs={tmp_path}"]  # fmt: skip
    for _ in range(2):  # the second run resumes the finished study: the same parent
        res = cli(args, cwd=tmp_path)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    first = sweep_parent(runs(tmp_path)[1])
    assert first.data.tags["resumed"] == "true"
    assert load_study(tmp_path, "again").user_attrs["parent_run_id"] == first.info.run_id
    optuna.delete_study(study_name="again", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    res = cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    parents = [r for r in runs(tmp_path)[1] if r.data.tags.get("transfersweep.role") == "sweep"]
    (second,) = [p for p in parents if p.info.run_id != first.info.run_id]
    assert "resumed" not in second.data.tags
    assert load_study(tmp_path, "again").user_attrs["parent_run_id"] == second.info.run_id
