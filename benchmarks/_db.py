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


def count_round_trips():
    """A counter of this process's database round trips: statements, commits, pool pre-pings."""
    import collections

    import sqlalchemy
    from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

    counts: collections.Counter = collections.Counter()
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute",
                            lambda *args: counts.update(("statements",)))
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "commit", lambda *args: counts.update(("commits",)))
    original = PGDialect_psycopg2.do_ping

    def do_ping(self, dbapi_connection):
        counts.update(("pings",))
        return original(self, dbapi_connection)

    PGDialect_psycopg2.do_ping = do_ping
    return counts
