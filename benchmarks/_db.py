"""Shared by the storage benchmarks: counting a process's database round trips."""

from __future__ import annotations


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
