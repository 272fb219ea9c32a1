"""A strategy and a regime of the user's own, from a temporary folder, without editing the
package: the documented examples (the strategy's code and yaml, and a regime: joint training,
then fine-tuning on the target alone), taken from docs/strategies.md itself, through Hydra's
search path, end to end and in sweeps."""

from __future__ import annotations

import re

import optuna
import pytest

from conftest import FAST, ROOT, cli, runs, sweep_parent


def doc_example(path: str) -> str:
    """The code block that follows `<!-- example: path -->` in docs/strategies.md."""
    text = (ROOT / "docs" / "strategies.md").read_text()
    m = re.search(rf"<!-- example: {re.escape(path)} -->\n```\w+\n(.*?)```", text, re.S)
    assert m, f"docs/strategies.md has no example block for {path}"
    return m.group(1)


@pytest.fixture
def plugin(tmp_path):
    """(PYTHONPATH entry, config dir) holding the user's strategy and regime."""
    code = tmp_path / "plugins"
    code.mkdir()
    (code / "my_strategies.py").write_text(doc_example("my_strategies.py"))
    conf = tmp_path / "myconf"
    (conf / "freeze").mkdir(parents=True)
    (conf / "regime").mkdir()
    (conf / "freeze" / "head_first.yaml").write_text(doc_example("freeze/head_first.yaml"))
    (conf / "regime" / "mine.yaml").write_text(doc_example("regime/mine.yaml"))
    return str(code), conf


def _cli(args, plugin, cwd):
    code, conf = plugin
    return cli(["--config-dir", str(conf), *args], cwd=cwd, env={"PYTHONPATH": code})


def test_own_strategy_and_regime_run_end_to_end(plugin, outputs):
    res = _cli(
        [*FAST, "regime=mine", "freeze=head_first",
         "freeze.head_epochs=1", f"paths.outputs={outputs}"],
        plugin, outputs,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    client, (r,) = runs(outputs)
    tags, m = r.data.tags, r.data.metrics
    assert r.info.status == "FINISHED"
    assert tags["paradigm"] == r.info.run_name == "mine+head_first1"
    assert (tags["regime"], tags["freeze"]) == ("mine", "head_first")
    assert r.data.params["freeze.head_epochs"] == "1"
    for stage in ("joint", "finetune"):  # both of the regime's stages, each in two phases
        assert m[f"{stage}/params_trainable_head"] < m[f"{stage}/params_trainable_all"]
        assert tags[f"{stage}/feature_cache_head"] == "on"  # the head phase: cached features
        steps = [h.step for h in client.get_metric_history(r.info.run_id, f"{stage}/val_acc")]
        assert sorted(steps) == [1, 2]  # epochs go on counting across the phases
    log = res.stdout + res.stderr
    assert "[finetune] 1 epochs on target data | head_first1 head:" in log
    assert "[finetune] 1 epochs on target data | head_first1 all:" in log


def test_own_strategy_key_is_checked(plugin, outputs):
    res = _cli([*FAST, "freeze=head_first", "freeze.head_epochs=many"], plugin, outputs)
    assert res.returncode == 2
    assert (
        "error: freeze.head_epochs='many' is invalid for strategy 'head_first'"
        in res.stdout + res.stderr
    )


@pytest.mark.slow
def test_own_strategy_and_regime_in_sweeps(plugin, outputs):
    # Every cell of {target_only, mine} x {last_layer, head_first}: runs, tags, table, heatmap.
    res = _cli(
        ["-m", "sweep=grid", *FAST, "regime=target_only,mine", "freeze=last_layer,head_first",
         f"paths.outputs={outputs}"],
        plugin, outputs,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    client, found = runs(outputs)
    children = [r for r in found if "trial" in r.data.tags]
    assert {(r.data.tags["regime"], r.data.tags["freeze"]) for r in children} == {
        (g, f) for g in ("target_only", "mine") for f in ("last_layer", "head_first")
    }
    parent = sweep_parent(found)
    table = open(
        client.download_artifacts(parent.info.run_id, "summary/paradigm_table.md", str(outputs))
    ).read()
    assert "| regime \\ freeze | last_layer | head_first |" in table
    assert re.search(
        r"\| mine \| [\d.]+ \([\d.]+\) n=1 #\d \| [\d.]+ \([\d.]+\) n=1 #\d head_first2 \|", table
    )
    csv = open(
        client.download_artifacts(parent.info.run_id, "summary/paradigm_table.csv", str(outputs))
    ).read()
    assert "mine,head_first," in csv and "mine+head_first2" in csv
    from transfersweep.sweep import summary

    study = optuna.load_study(
        study_name="grid-digits-test_resnet", storage=f"sqlite:///{outputs / 'optuna.db'}"
    )
    regimes, strategies = summary.axes(summary.best_per_cell(summary.rows(study, "val_acc")))
    assert (regimes, strategies) == (["mine", "target_only"], ["last_layer", "head_first"])
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert "summary/paradigm_heatmap.png" in names  # drawn over exactly these axes

    # TPE: the strategy's own key is sampled over the range it declares, in its trials only.
    res = _cli(
        ["-m", "sweep=paradigm", *FAST, "regime=target_only", "freeze=head_first",
         "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=tpe", "hydra.sweeper.confirm.top_k=0", f"paths.outputs={outputs}"],
        plugin, outputs,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    study = optuna.load_study(study_name="tpe", storage=f"sqlite:///{outputs / 'optuna.db'}")
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert 1 <= t.params["freeze.head_epochs"] <= 5
        assert t.user_attrs["paradigm"]["params"]["head_epochs"] == t.params["freeze.head_epochs"]
