"""`make server`'s command line, without starting a server (test_servers.py starts real ones)."""

from __future__ import annotations

import argparse
import subprocess
import sys

from transfersweep import server


def _args(**kw):
    base = dict(backend="sqlite:///x/mlflow.db", artifacts="art", host="127.0.0.1", port=5000,
                workers=2, extra=[])  # fmt: skip
    return argparse.Namespace(**(base | kw))


def test_loopback_by_default_and_absolute_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cmd = server.command(_args())
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--allowed-hosts" not in cmd
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'x' / 'mlflow.db'}"
    assert (tmp_path / "x").is_dir() and (tmp_path / "art").is_dir()
    assert "--serve-artifacts" in cmd  # workers need no shared disk


def test_exposed_host_accepts_other_host_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cmd = server.command(_args(host="0.0.0.0", extra=["--gunicorn-opts", "-t 60"]))
    assert cmd[cmd.index("--allowed-hosts") + 1] == "*" and cmd[-2:] == ["--gunicorn-opts", "-t 60"]


def test_unknown_backend_is_refused_with_the_forms_it_takes(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "transfersweep.server", "--backend", "ftp://u:secret@h/db"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2
    assert "use sqlite:///PATH or postgresql://" in res.stderr and "secret" not in res.stderr
