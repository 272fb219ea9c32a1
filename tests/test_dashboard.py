"""`make dashboard`: optuna-dashboard serves a stored study over HTTP, pruned curves included."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request

import optuna
import pytest

from conftest import ROOT
from servers import free_port, get_json, poll_http


@pytest.mark.slow
def test_make_dashboard_serves_the_study_with_its_pruned_curves(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="live", storage=storage, direction="maximize")
    for i in range(3):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
        for epoch in range(3):
            trial.report(0.1 * i + 0.01 * epoch, epoch)
        state = optuna.trial.TrialState.PRUNED if i == 0 else optuna.trial.TrialState.COMPLETE
        study.tell(trial, None if i == 0 else 0.1 * i, state=state)
    study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})  # running
    port = free_port()
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "dashboard", f"STORAGE={storage}", f"PORT={port}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # make and the server it starts stop together
    )  # fmt: skip
    try:
        studies = poll_http(lambda: get_json(f"http://127.0.0.1:{port}/api/studies"), proc,
                            what="make dashboard")  # fmt: skip
        (live,) = [s for s in studies["study_summaries"] if s["study_name"] == "live"]
        url = f"http://127.0.0.1:{port}"
        detail = get_json(f"{url}/api/studies/{live['study_id']}")
        states = sorted(t["state"] for t in detail["trials"])
        assert states == ["Complete", "Complete", "Pruned", "Running"]
        pruned = next(t for t in detail["trials"] if t["state"] == "Pruned")
        assert [v["step"] for v in pruned["intermediate_values"]] == [0, 1, 2]
        importances = get_json(f"{url}/api/studies/{live['study_id']}/param_importances")
        assert importances["param_importances"][0][0]["name"] == "lr"
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard/", timeout=5).read()
        assert b"<html" in page.lower()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert f"studies: http://127.0.0.1:{port}/dashboard/" in out  # the link it prints
