"""Real servers for the tests: a throwaway PostgreSQL cluster and an MLflow tracking server, both
on 127.0.0.1, started the way users start them and stopped afterwards.

PostgreSQL comes from the distro (`.ci/run` installs Debian's `postgresql` when it is missing).
PostgreSQL refuses to run as root, so under root the cluster runs as the `postgres` system user.
Without the binaries the tests that need them skip, unless TRANSFERSWEEP_REQUIRE_SERVERS=1 (CI),
where they fail instead.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

PASSWORD = "s3cret-Pw-7731"  # the tests grep every output for it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bindir() -> Path | None:
    for pattern in ("/usr/lib/postgresql/*/bin",):
        found = sorted(glob.glob(pattern), key=lambda p: int(p.split("/")[-2]))
        if found:
            return Path(found[-1])
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _missing(what: str):
    if os.environ.get("TRANSFERSWEEP_REQUIRE_SERVERS") == "1":
        pytest.fail(f"{what} is required here (TRANSFERSWEEP_REQUIRE_SERVERS=1)")
    pytest.skip(f"{what} is not installed (apt-get install postgresql)")


class Postgres:
    """One cluster; `url(db)` gives a SQLAlchemy URL with the password, databases made on demand."""

    def __init__(self, port: int):
        self.port = port

    def url(self, db: str) -> str:
        return f"postgresql://tsuser:{PASSWORD}@127.0.0.1:{self.port}/{db}"

    def create_db(self, db: str) -> str:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="tsuser", password=PASSWORD, dbname="postgres",
            autocommit=True,
        ) as conn:  # fmt: skip
            conn.execute(f'CREATE DATABASE "{db}"')  # test-chosen names only
        return self.url(db)


@contextmanager
def postgres():
    bindir = _pg_bindir()
    if bindir is None:
        _missing("PostgreSQL")
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    base = Path(tempfile.mkdtemp(prefix="ts-pg-"))  # not under pytest's 0700 tmp (postgres user)
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    pwfile = base / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if as_root:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
        shutil.chown(pwfile, "postgres")
    port = free_port()
    log = base / "server.log"
    subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "tsuser", "--pwfile", str(pwfile),
         "--auth=scram-sha-256", "-E", "UTF8"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
         f"-h 127.0.0.1 -p {port} -k {sock} -c max_connections=200", "start"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield Postgres(port)
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def mlflow_server(
    backend: str,
    artifacts: Path,
    port: int | None = None,
    args: tuple = (),
    env: dict | None = None,
):
    """`python -m transfersweep.server` (what `make server` runs) until the block ends."""
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "transfersweep.server", "--backend", backend,
         "--artifacts", str(artifacts), "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    _drained(proc)  # a busy server's access log would fill the pipe and block the server
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def get_json(request: str | urllib.request.Request, timeout: float = 5) -> Any:
    """One HTTP request to a test server, its JSON answer."""
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.loads(r.read())


def _drained(proc: subprocess.Popen) -> None:
    """Read `proc`'s piped output on a thread as it comes (kept for `output`): a server whose
    pipe nobody reads blocks once the pipe is full (8 workers' requests log that much)."""
    lines: list[str] = []

    def drain() -> None:
        for line in proc.stdout:
            lines.append(line)

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    proc.drain = (thread, lines)  # type: ignore[attr-defined]


def output(proc: subprocess.Popen) -> str:
    """What `proc` wrote (all of it once it has exited)."""
    if not hasattr(proc, "drain"):
        return proc.stdout.read() if proc.stdout else ""
    thread, lines = proc.drain
    if proc.poll() is not None:
        thread.join(timeout=10)
    return "".join(lines)


def poll_http(fetch: Callable[[], Any], proc: subprocess.Popen | None = None,
              within: float = 120, what: str = "the server") -> Any:  # fmt: skip
    """`fetch()` again every 0.5 s while it raises OSError (not listening or not ready yet),
    for at most `within` seconds, failing at once with its output if `proc` has exited."""
    deadline = time.time() + within
    while True:
        try:
            return fetch()
        except OSError:
            if proc is not None and proc.poll() is not None:
                out = output(proc)
                raise AssertionError(f"{what} exited:\n{out[-3000:]}") from None
            if time.time() > deadline:
                raise AssertionError(f"{what} did not answer within {within:.0f} s") from None
            time.sleep(0.5)


def _wait_healthy(url: str, proc: subprocess.Popen) -> None:
    def healthy() -> None:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
            if r.status != 200:
                raise OSError(f"/health answered {r.status}")

    poll_http(healthy, proc, what=f"MLflow server at {url}")
