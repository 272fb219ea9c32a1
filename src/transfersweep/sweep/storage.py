"""The study's storage URL: made absolute for SQLite, and checked before a sweep starts."""

from __future__ import annotations

import functools
from pathlib import Path


def storage_url(url: str | None) -> str | None:
    """Make a sqlite URL absolute (every job opens the same file) and create its folder."""
    if not url or not url.startswith("sqlite:///"):
        return url
    path = Path(url.removeprefix("sqlite:///")).expanduser().resolve()  # "rel" -> cwd/rel
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


@functools.lru_cache(maxsize=4)
def engine(url: str):
    """One SQLAlchemy engine per URL, without a pool (locks are held on their own connection)."""
    import sqlalchemy

    args = {"connect_timeout": 10} if url.startswith("postgresql") else {}
    return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, connect_args=args)


def check_reachable(storage: str | None) -> None:
    """Fail in seconds, with the fix, when a database storage cannot be reached (libpq would
    otherwise wait on the network for minutes, and the error would be a long traceback)."""
    if not storage or storage.startswith("sqlite"):
        return
    from transfersweep.errors import ConfigError, first_line
    from transfersweep.tracking import redact

    try:
        with engine(storage).connect():
            pass
    except Exception as e:
        reason = first_line(getattr(e, "orig", None) or e, type(e).__name__)
        raise ConfigError(
            f"hydra.sweeper.storage={redact(storage)!r} cannot be opened ({redact(reason)[:300]}): check "
            "the URL, that the database server runs and the database exists, and the password "
            "(PGPASSWORD or ~/.pgpass for PostgreSQL)"
        ) from None
