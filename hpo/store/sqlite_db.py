"""Readying an embedded SQLite database file before Optuna opens it.

A file that cannot be our database is refused in one line; a usable one is switched to WAL mode so
that several local workers and optuna-dashboard can share it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

from hpo.errors import HpoFailure

# Seconds a connection waits for a file another process holds (e.g. a worker creating the
# tables holds it for seconds); the engine's connections use it too (hpo.store.storage).
BUSY_TIMEOUT = 60
WAL_ATTEMPT = 0.5  # seconds one attempt to switch to WAL waits for the file


def check_sqlite_file(url: str, path: Path, writing: bool) -> None:
    """One line, naming the file and what to do, for a file that cannot be our database. A
    command that only reads leaves the file exactly as it is."""
    if writing and path.exists() and not os.access(path, os.W_OK):
        raise HpoFailure(f"storage {url!r}: {str(path)!r} is read-only; workers must write to it "
                         "(fix its permissions, or copy it and open the copy)")
    try:
        if not writing:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                    timeout=BUSY_TIMEOUT)) as conn:
                conn.execute("SELECT name FROM sqlite_master").fetchall()
            return
        _use_wal(path, BUSY_TIMEOUT)
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            raise HpoFailure(f"storage {url!r}: {str(path)!r} stayed locked by another process for "
                             f"{BUSY_TIMEOUT}s ({e}); stop whatever holds it, then retry") from None
        raise _not_sqlite(url, path, e) from None
    except sqlite3.Error as e:
        raise _not_sqlite(url, path, e) from None


def _use_wal(path: Path, timeout: float) -> None:
    """Switch the file to WAL (it persists in the file: readers never block writers).

    Switching needs the file to itself. Workers started together race: each reads the mode, one
    switches, and another that read the old mode would wait for ever behind the first one's open
    connections. So each attempt waits briefly, then the mode is read again.
    """
    deadline = time.monotonic() + timeout
    with contextlib.closing(sqlite3.connect(path, timeout=WAL_ATTEMPT)) as conn:
        while True:
            try:
                if _journal_mode(conn) == "wal":
                    return
                conn.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as e:
                if not ("locked" in str(e) or "busy" in str(e)) or time.monotonic() >= deadline:
                    raise


def _journal_mode(conn: sqlite3.Connection) -> str:
    return conn.execute("PRAGMA journal_mode").fetchone()[0].lower()


def _not_sqlite(url: str, path: Path, e: Exception) -> HpoFailure:
    return HpoFailure(f"storage {url!r}: {str(path)!r} is not an SQLite database ({e}); pass "
                      "another file, or move this one away")
