"""One lock per study, held by whichever worker is creating the stores or taking a trial.

Many workers (processes or machines) run the same sweep command against one study. Under this
lock a worker creates the study and the MLflow parent run (a fresh SQLite store must not be
migrated by two processes at once), counts the study's trials and asks for the next one, so the
study ends with exactly `n_trials` trials. The lock lives where the study lives:
- PostgreSQL: a session advisory lock (`pg_advisory_lock`), which works across machines and is
  released by the server if the worker dies;
- MySQL: `GET_LOCK`;
- SQLite: `flock` on `<db>.lock` beside the file (one machine; released when the process dies).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transfersweep.sweep.storage import engine

log = logging.getLogger("transfersweep.sweep")


def _key(study_name: str) -> int:
    digest = hashlib.blake2b(f"transfersweep:{study_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)  # a bigint for pg_advisory_lock


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive `flock` on `path` (created) while the block runs: one machine's processes."""
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def study_lock(storage: str | None, study_name: str) -> Iterator[None]:
    if not storage:  # in-memory study: one process
        yield
        return
    if storage.startswith("sqlite:///"):
        with file_lock(Path(storage.removeprefix("sqlite:///") + ".lock")):
            yield
        return
    from sqlalchemy import text

    dialect = storage.split(":", 1)[0].split("+", 1)[0]
    if dialect == "postgresql":
        take, give = "SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)"
        params = {"k": _key(study_name)}
    elif dialect == "mysql":
        take, give = "SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)"
        params = {"k": f"transfersweep:{study_name}"[:64]}
    else:
        log.warning("no study lock for %s storage: start parallel workers one at a time", dialect)
        yield
        return
    with engine(storage).connect() as conn:
        conn.execute(text(take), params)
        try:
            yield
        finally:
            conn.execute(text(give), params)
