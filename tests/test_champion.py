"""The champion: registered after a sweep, loaded in a fresh process, predicting at the logged
test accuracy; `python -m transfersweep.predict` on folders, runs and registered models."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import FAST, cli, compose, runs, sweep_parent

STUDY = "champ"


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("champion")
    res = cli(
        ["-m", "sweep=paradigm", *FAST, "regime=target_only,joint", "freeze=last_layer,full",
         "hydra.sweeper.n_trials=3", f"hydra.sweeper.study_name={STUDY}",
         "hydra.sweeper.confirm.top_k=2", "hydra.sweeper.confirm.repeats=3",
         f"paths.outputs={out}"],
        cwd=out,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    client, found = runs(out)
    parent = sweep_parent(found)
    return out, client, parent, res


def _checkpoint(client, run_id, dst):
    return yaml.safe_load(
        open(client.download_artifacts(run_id, "checkpoint/config.yaml", str(dst)))
    )


def _logged_test_acc(client, run_id, repeat):
    (h,) = [h for h in client.get_metric_history(run_id, "repeat/test_acc") if h.step == repeat]
    return h.value


def _test_images(cfg_doc):
    from omegaconf import OmegaConf

    from transfersweep import data as data_mod

    d = data_mod.build(OmegaConf.create(cfg_doc["config"]), need_source=False)
    return d.target.classes, d.target.test


def test_the_winner_is_registered_with_alias_verdict_and_metrics(swept):
    out, client, parent, res = swept
    mv = client.get_model_version_by_alias(STUDY, "champion")
    assert mv.run_id == parent.data.tags["best_run_id"]  # the verdict's winner
    winner = client.get_run(mv.run_id)
    assert winner.data.tags["confirm"] == "true"  # from the confirmation runs
    assert parent.data.tags["verdict"] in mv.description
    assert mv.tags["paradigm"] == winner.data.tags["paradigm"]
    assert float(mv.tags["val_acc"]) == pytest.approx(winner.data.metrics["val_acc"], abs=1e-4)
    assert mv.tags["n_repeats"] == "3" and mv.tags["verdict_source"] == "confirmation"
    assert parent.data.tags["champion_uri"] == f"models:/{STUDY}@champion"
    # nothing pickled: the model is code + safetensors weights + its config
    files = [a.path for a in client.list_artifacts(mv.run_id, "model")]
    names = {f.rsplit("/", 1)[-1] for f in files}
    assert "MLmodel" in names and not any(n.endswith((".pkl", ".pickle")) for n in names)
    mlmodel = open(client.download_artifacts(mv.run_id, "model/MLmodel", str(out / "mm"))).read()
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in mlmodel  # models from code
    assert {"champion_model.py", "model.safetensors", "config.yaml"} <= names | {
        a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(mv.run_id, "model/artifacts")
    }
    # re-running the finished sweep keeps the same champion
    again = cli(res.args[3:], cwd=out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert client.get_model_version_by_alias(STUDY, "champion").version == mv.version


def test_champion_in_a_fresh_process_predicts_at_the_logged_test_accuracy(swept, tmp_path):
    out, client, parent, _ = swept
    mv = client.get_model_version_by_alias(STUDY, "champion")
    ckpt = _checkpoint(client, mv.run_id, tmp_path)
    classes, test = _test_images(ckpt)
    np.save(tmp_path / "x.npy", test.images.permute(0, 2, 3, 1).numpy())  # (N,H,W,3) uint8
    code = f"""
import json, sys, mlflow, numpy as np
mlflow.set_tracking_uri("sqlite:///{out}/mlflow.db")
m = mlflow.pyfunc.load_model("models:/{STUDY}@champion")
out = m.predict(np.load("{tmp_path}/x.npy"))
json.dump({{"labels": list(out["label"]), "p": out["probability"].tolist()}}, sys.stdout)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    truth = [classes[y] for y in test.labels.tolist()]
    acc = sum(a == b for a, b in zip(got["labels"], truth, strict=True)) / len(truth)
    expected = _logged_test_acc(client, mv.run_id, ckpt["checkpoint"]["repeat"])
    assert acc == pytest.approx(expected, abs=1e-9)
    assert ckpt["checkpoint"]["test_acc"] == pytest.approx(expected)
    assert all(0.2 <= p <= 1.0 for p in got["p"])  # softmax over the 5 target classes


def _write_folder(root, classes, test):
    from PIL import Image

    for i, (img, y) in enumerate(zip(test.images, test.labels.tolist(), strict=True)):
        folder = root / classes[y]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")


def _predict(args, cwd):
    return cli(args, cwd=cwd, timeout=300, module="transfersweep.predict")


def test_predict_cli_writes_predictions_and_accuracy(swept, tmp_path):
    out, client, parent, _ = swept
    mv = client.get_model_version_by_alias(STUDY, "champion")
    ckpt = _checkpoint(client, mv.run_id, tmp_path)
    classes, test = _test_images(ckpt)
    _write_folder(tmp_path / "imgs", classes, test)
    expected = _logged_test_acc(client, mv.run_id, ckpt["checkpoint"]["repeat"])
    uri = f"tracking_uri=sqlite:///{out}/mlflow.db"
    for model in (f"models:/{STUDY}@champion", f"runs:/{mv.run_id}"):
        res = _predict([f"model={model}", f"images={tmp_path / 'imgs'}", uri], tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"accuracy {expected:.4f} on {len(test)} images" in res.stdout
        rows = (tmp_path / "predictions.csv").read_text().splitlines()
        assert rows[0] == "path,label,probability" and len(rows) == len(test) + 1
    # a plain run (not a sweep) has no pyfunc model: runs:/ falls back to its checkpoint
    single = tmp_path / "single"
    single.mkdir()
    from transfersweep import train

    train.run(compose([*FAST, "regime=target_only", "freeze=last_layer"], single))
    c2, (run,) = runs(single)
    res = _predict(
        [f"model=runs:/{run.info.run_id}", f"images={tmp_path / 'imgs' / classes[0]}",
         f"tracking_uri=sqlite:///{single}/mlflow.db", f"out={tmp_path / 'one.csv'}"],
        tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "accuracy" not in res.stdout  # one flat folder: no classes to score against
    assert len((tmp_path / "one.csv").read_text().splitlines()) == 1 + sum(
        1 for y in test.labels.tolist() if y == 0
    )


@pytest.mark.parametrize(
    "args, match",
    [
        (["images=x"], "missing model=..."),
        (["model=m", "images="], "missing images=..."),
        (["model=m", "images=/nonexistent/dir"], "images='/nonexistent/dir' does not exist"),
        (["model=m", "image=x"], "unknown argument 'image=x'"),
    ],
)
def test_predict_bad_arguments_fail_clearly(tmp_path, args, match):
    res = _predict(args, tmp_path)
    assert res.returncode == 2 and match in res.stderr and "Traceback" not in res.stderr
