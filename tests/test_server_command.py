"""`make server`'s command line, without starting a server (test_servers.py starts real ones)."""

from __future__ import annotations

import argparse

import pytest

from conftest import cli
from transfersweep import server


def _args(**kw):
    base = dict(backend="sqlite:///x/mlflow.db", artifacts="art", host="127.0.0.1", port=5000,
                workers=2, extra=[], auth="auto", auth_config=None)  # fmt: skip
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
    res = cli(["--backend", "ftp://u:secret@h/db"], cwd=tmp_path, timeout=60,
              module="transfersweep.server")  # fmt: skip
    assert res.returncode == 2
    assert "use sqlite:///PATH or postgresql://" in res.stderr and "secret" not in res.stderr


def test_basic_auth_unless_loopback_or_auth_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--app-name" not in server.command(_args())
    exposed = server.command(_args(host="0.0.0.0"))
    assert exposed[exposed.index("--app-name") + 1] == "basic-auth"
    assert "--app-name" not in server.command(_args(host="0.0.0.0", auth="none"))
    assert "--app-name" in server.command(_args(auth="basic"))


def test_auth_environment_keeps_the_password_out_of_files_and_arguments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    args = _args(host="0.0.0.0")
    with pytest.raises(server.AuthError, match="export MLFLOW_AUTH_ADMIN_PASSWORD"):
        server.auth_env(args, tmp_path)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "pw-123-secret")
    env = server.auth_env(args, tmp_path)
    ini = open(env["MLFLOW_AUTH_CONFIG_PATH"]).read()
    assert f"sqlite:///{tmp_path / 'basic_auth.db'}" in ini and "pw-123-secret" not in ini
    key = tmp_path / "flask_secret_key"
    assert (
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == key.read_text()
        and oct(key.stat().st_mode)[-3:] == "600"
    )
    assert (
        server.auth_env(args, tmp_path)["MLFLOW_FLASK_SERVER_SECRET_KEY"] == key.read_text()
    )  # kept
    assert "pw-123-secret" not in " ".join(server.command(args))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD")
    outside = tmp_path.parent / f"{tmp_path.name}_auth.ini"  # not under the working directory
    outside.write_text("[mlflow]\n# admin_password =\n")  # MLflow's template: commented out
    with pytest.raises(server.AuthError, match="export MLFLOW_AUTH_ADMIN_PASSWORD"):
        server.auth_env(_args(host="0.0.0.0", auth_config=str(outside)), tmp_path)
    outside.write_text("[mlflow]\nadmin_password = pw-456\n")
    env = server.auth_env(_args(host="0.0.0.0", auth_config=str(outside)), tmp_path)
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == str(outside.resolve())
    inside = tmp_path / "basic_auth_mine.ini"
    inside.write_text("[mlflow]\nadmin_password = x\n")
    with pytest.raises(server.AuthError, match="is inside this repository"):
        server.auth_env(_args(host="0.0.0.0", auth_config=str(inside)), tmp_path)
