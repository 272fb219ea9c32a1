"""Your own folders: a target folder alone sweeps the regimes that need no source (and says so),
a single run that needs a source names the fix, and a study named after one folder project
refuses to mix in another's trials."""

from __future__ import annotations

import pytest

from conftest import FAST, cli, load_study, runs, sweep_parent

SWEEP = ["-m", "sweep=paradigm", *FAST, "search.strategies=[last_layer,full]",
         "hydra.sweeper.n_trials=2", "hydra.sweeper.confirm.top_k=0"]  # fmt: skip


def test_a_target_folder_alone_sweeps_without_the_source_regimes(outputs, image_folder):
    mine = image_folder("birds", {"finch": 12, "robin": 12, "wren": 12})
    res = cli([*SWEEP, "data=imagefolder", f"data.target.root={mine}", f"paths.outputs={outputs}"],
              cwd=outputs)  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    note = "the search covered target_only only: pretrain_finetune, joint, pretrain_joint need one"
    assert note in out
    study = load_study(outputs, "birds-test_resnet")  # named after the folder and the backbone
    assert {t.params.get("regime", "target_only") for t in study.trials} == {"target_only"}
    assert study.trials[0].user_attrs["default"] and study.trials[0].params["freeze"] == "full"
    assert "the default (target_only+full) is " in out  # what `make train TARGET=...` runs
    client, found = runs(outputs)
    parent = sweep_parent(found)
    assert note in parent.data.tags["verdict"]
    assert client.get_model_version_by_alias("birds-test_resnet", "champion")


def test_a_single_run_that_needs_a_source_names_the_fix(outputs, image_folder):
    mine = image_folder("birds", {"finch": 6, "robin": 6})
    res = cli([*FAST, "data=imagefolder", f"data.target.root={mine}", "regime=pretrain_finetune",
               f"paths.outputs={outputs}"], cwd=outputs)  # fmt: skip
    assert res.returncode == 2
    err = res.stdout + res.stderr
    assert "regime=pretrain_finetune trains on a source set, but data.source.root is not set" in err
    assert "regime=target_only" in err
    assert not (outputs / "mlflow.db").exists()


@pytest.mark.slow
def test_a_second_folder_project_is_refused_by_the_first_ones_study(
    outputs, tmp_path, image_folder
):
    """Two projects whose folders share a name: the second resumes nothing of the first."""
    from conftest import write_image_folder

    a = image_folder("birds", {"finch": 12, "robin": 12})
    b = write_image_folder(tmp_path / "other" / "birds", {"crow": 12, "jay": 12}, seed=3)
    common = [*SWEEP, "data=imagefolder", f"paths.outputs={outputs}"]
    assert cli([*common, f"data.target.root={a}"], cwd=outputs).returncode == 0
    before = len(load_study(outputs, "birds-test_resnet").trials)

    res = cli([*common, f"data.target.root={b}"], cwd=outputs)
    err = res.stdout + res.stderr
    assert res.returncode == 2, err[-2000:]
    assert "study 'birds-test_resnet' holds trials of another sweep" in err
    assert "data (target.fingerprint" in err and "STUDY=<name>" in err
    assert "hydra.sweeper.resume_changed=true" in err
    assert len(load_study(outputs, "birds-test_resnet").trials) == before  # nothing ran

    # the same folder with another backbone is refused too; a new name is the fix
    res = cli([*common, f"data.target.root={a}", "hydra.sweeper.study_name=birds-test_resnet",
               "backbone=tiny_vit"], cwd=outputs)  # fmt: skip
    assert res.returncode == 2 and "name: test_resnet -> test_vit" in res.stdout + res.stderr
    res = cli([*common, f"data.target.root={b}", "hydra.sweeper.study_name=corvids"], cwd=outputs)
    assert res.returncode == 0
    assert len(load_study(outputs, "corvids").trials) == 2

    # ... or the flag that says "yes, continue": the study takes 2 more trials
    res = cli([*common, f"data.target.root={b}", "hydra.sweeper.n_trials=4",
               "hydra.sweeper.resume_changed=true"], cwd=outputs)  # fmt: skip
    assert res.returncode == 0, (res.stdout + res.stderr)[-2000:]
    assert len(load_study(outputs, "birds-test_resnet").trials) == before + 2
