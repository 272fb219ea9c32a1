"""`make server`: an MLflow tracking server that many workers (and machines) log to over HTTP.

    python -m transfersweep.server [--backend URL] [--artifacts DIR] [--host H] [--port P]
                                   [--auth auto|basic|none] [--auth-config INI]

Backend: SQLite under outputs/server/ by default, PostgreSQL by URL (put the password in
PGPASSWORD or ~/.pgpass rather than the URL; a password in the URL is redacted in what this
prints). Artifacts are proxied by the server (`--artifacts-destination`), so workers on other
machines need no shared disk. Binds to 127.0.0.1 unless --host says otherwise.

Authentication: on any other interface the server runs MLflow's basic-auth app (`--auth auto`,
the default; `basic` forces it on loopback too). The admin account is created on first start
from MLflow's own environment variables MLFLOW_AUTH_ADMIN_USERNAME (default admin) and
MLFLOW_AUTH_ADMIN_PASSWORD, or from `admin_password` in an MLflow auth ini kept outside the
repository (`--auth-config`); never from the command line. Without a password it refuses to
start and says how to set one. `--auth none` serves without a password (a warning says so).
Users and workers log in through MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.

The command is run as an argument list (no shell), so no value given here reaches a shell.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from transfersweep.tracking import redact

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class AuthError(Exception):
    """Refusal to serve exposed runs without a password: exit code 2, with the fix."""


def auth_mode(args: argparse.Namespace) -> str:
    if args.auth == "auto":
        return "none" if args.host in LOOPBACK else "basic"
    return args.auth


def auth_env(args: argparse.Namespace, server_dir: Path) -> dict[str, str]:
    """The environment of an authenticated server: its auth config (the user database next to
    the tracking one; an existing ini given by --auth-config), a static Flask secret (CSRF
    across workers and restarts; made once, private) and the admin password check."""
    env: dict[str, str] = {}
    if args.auth_config:
        ini = Path(args.auth_config).expanduser().resolve()
        if not ini.is_file():
            raise AuthError(
                f"--auth-config {ini} does not exist: write an MLflow basic_auth.ini there"
            )
        if Path.cwd().resolve() in ini.parents:
            raise AuthError(
                f"--auth-config {ini} is inside this repository, where a password would be "
                "committed: keep it outside (e.g. ~/.config/mlflow/basic_auth.ini, mode 600)"
            )
        import configparser

        parsed = configparser.ConfigParser()
        parsed.read(ini)
        has_password = bool(parsed.get("mlflow", "admin_password", fallback=""))
    else:
        ini = server_dir / "basic_auth.ini"  # holds no password: that stays in the environment
        ini.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{server_dir / 'basic_auth.db'}\n"
            f"admin_username = {os.environ.get('MLFLOW_AUTH_ADMIN_USERNAME', 'admin')}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        has_password = (server_dir / "basic_auth.db").exists()  # admin made on a first start
    if not has_password and not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        raise AuthError(
            f"--host {args.host} exposes every run and artifact to the network, so the server "
            "needs a password: export MLFLOW_AUTH_ADMIN_PASSWORD=... (and "
            "MLFLOW_AUTH_ADMIN_USERNAME, default admin) before starting it, or give "
            "AUTH_CONFIG=<an MLflow basic_auth.ini with admin_password, outside the repo>; "
            "on a network you trust, AUTH=none serves without one"
        )
    secret = server_dir / "flask_secret_key"
    if not secret.exists():
        import secrets

        secret.touch(mode=0o600)
        secret.write_text(secrets.token_hex(32))
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
    env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secret.read_text().strip()
    return env


def command(args: argparse.Namespace) -> list[str]:
    backend = args.backend
    if backend.startswith("sqlite:///"):
        db = Path(backend.removeprefix("sqlite:///")).expanduser().resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        backend = f"sqlite:///{db}"
    artifacts = Path(args.artifacts).expanduser().resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend,
        "--artifacts-destination", str(artifacts),
        "--serve-artifacts",
        "--host", args.host,
        "--port", str(args.port),
        "--workers", str(args.workers),
    ]  # fmt: skip
    if args.host not in LOOPBACK:  # requests name the machine, not localhost
        cmd += ["--allowed-hosts", "*"]
    if auth_mode(args) == "basic":
        cmd += ["--app-name", "basic-auth"]
    return cmd + list(args.extra)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m transfersweep.server", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--backend", default="sqlite:///outputs/server/mlflow.db",
                   help="database URL: sqlite:///PATH (default outputs/server/mlflow.db) or postgresql://user@host/db")  # fmt: skip
    p.add_argument(
        "--artifacts",
        default="outputs/server/artifacts",
        help="artifact folder the server writes to",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback only)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2, help="server worker processes")
    p.add_argument("--auth", choices=("auto", "basic", "none"), default="auto",
                   help="basic auth: auto = on unless the host is loopback")  # fmt: skip
    p.add_argument("--auth-config", default=None,
                   help="an MLflow basic_auth.ini outside the repo (admin_password, user db)")  # fmt: skip
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more `mlflow server` options")
    args = p.parse_args(argv)
    if args.extra[:1] == ["--"]:
        args.extra = args.extra[1:]
    if not args.backend.startswith(("sqlite:///", "postgresql", "mysql")):
        p.error(
            f"--backend {redact(args.backend)!r}: use sqlite:///PATH or postgresql://user@host:port/db"
        )
    cmd = command(args)
    env = dict(os.environ)
    if auth_mode(args) == "basic":
        server_dir = Path(args.artifacts).expanduser().resolve().parent
        try:
            env |= auth_env(args, server_dir)
        except AuthError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        print("authentication: MLflow basic auth (log in with MLFLOW_TRACKING_USERNAME / "
              "MLFLOW_TRACKING_PASSWORD)", file=sys.stderr)  # fmt: skip
    elif args.host not in LOOPBACK:
        print(f"warning: AUTH=none on {args.host}: anyone who reaches this port can read and "
              "write every run and artifact; use it only on a network you trust", file=sys.stderr)  # fmt: skip
    shown = args.host if args.host not in ("0.0.0.0", "::") else "<this machine's name>"
    print(f"MLflow server: {redact(' '.join(cmd[2:]))}", file=sys.stderr)
    print(f"log to it with:  tracking.uri=http://{shown}:{args.port}", file=sys.stderr)
    print(f"runs in the UI:  http://{shown}:{args.port}/#/experiments/1/runs?workflowType=machine_learning",
          file=sys.stderr, flush=True)  # fmt: skip
    os.execve(cmd[0], cmd, env)  # replaces this process: Ctrl-C and SIGTERM reach the server


if __name__ == "__main__":
    main()
