"""Shared by the storage benchmarks: scratch databases and counting database round trips."""

from __future__ import annotations

import contextlib
import os
import uuid

DEFAULT_PG = os.environ.get("HPO_TEST_DATABASE_URL",
                            "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def scratch_database(base_url: str, tag: str):
    """A fresh PostgreSQL database on the server of base_url, dropped afterwards."""
    import sqlalchemy

    url = sqlalchemy.engine.make_url(base_url)
    name = f"hpo_{tag}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def count_round_trips(label=None):
    """A counter of this process's database round trips: statements, commits, pool pre-pings.

    With ``label`` (a function of no arguments, called at each round trip), keys are
    ``"<label>:<kind>"``, e.g. to split the counts by the thread or the step that made them.
    """
    import collections

    import sqlalchemy
    from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

    counts: collections.Counter = collections.Counter()

    def count(kind: str) -> None:
        counts[f"{label()}:{kind}" if label else kind] += 1

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute",
                            lambda *args: count("statements"))
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "commit", lambda *args: count("commits"))
    original = PGDialect_psycopg2.do_ping

    def do_ping(self, dbapi_connection):
        count("pings")
        return original(self, dbapi_connection)

    PGDialect_psycopg2.do_ping = do_ping
    return counts
