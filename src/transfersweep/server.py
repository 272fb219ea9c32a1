"""`make server`: an MLflow tracking server that many workers (and machines) log to over HTTP.

    python -m transfersweep.server [--backend URL] [--artifacts DIR] [--host H] [--port P]

Backend: SQLite under outputs/server/ by default, PostgreSQL by URL (put the password in
PGPASSWORD or ~/.pgpass rather than the URL; a password in the URL is redacted in what this
prints). Artifacts are proxied by the server (`--artifacts-destination`), so workers on other
machines need no shared disk. Binds to 127.0.0.1 unless --host says otherwise: the server has no
authentication, so expose it only on a network you trust (or behind a proxy that adds it).

The command is run as an argument list (no shell), so no value given here reaches a shell.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from transfersweep.tracking import redact

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


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
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more `mlflow server` options")
    args = p.parse_args(argv)
    if args.extra[:1] == ["--"]:
        args.extra = args.extra[1:]
    if not args.backend.startswith(("sqlite:///", "postgresql", "mysql")):
        p.error(
            f"--backend {redact(args.backend)!r}: use sqlite:///PATH or postgresql://user@host:port/db"
        )
    cmd = command(args)
    if args.host not in LOOPBACK:
        print(f"warning: binding to {args.host}: anyone who reaches this port can read and write runs "
              "(the MLflow server has no authentication)", file=sys.stderr)  # fmt: skip
    shown = args.host if args.host not in ("0.0.0.0", "::") else "<this machine's name>"
    print(f"MLflow server: {redact(' '.join(cmd[2:]))}", file=sys.stderr)
    print(f"log to it with:  tracking.uri=http://{shown}:{args.port}", file=sys.stderr)
    print(f"runs in the UI:  http://{shown}:{args.port}/#/experiments/1/runs?workflowType=machine_learning",
          file=sys.stderr, flush=True)  # fmt: skip
    os.execv(cmd[0], cmd)  # the server replaces this process: Ctrl-C and SIGTERM reach it directly


if __name__ == "__main__":
    main()
