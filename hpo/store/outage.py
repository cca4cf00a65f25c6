"""Database outages: telling one from an error that waiting will not fix, and logging each once.

An outage gets one log line as it starts, one every OUTAGE_LOG_EVERY seconds while it lasts and one
when it ends, whichever of the process's threads notices.
"""

from __future__ import annotations

import logging
import threading
import time

import sqlalchemy.exc

from hpo.store.urls import mask

log = logging.getLogger(__name__)

OUTAGE_LOG_EVERY = 10.0  # seconds between "still unreachable" lines

# PostgreSQL error classes that mean "the connection is gone or not possible right now".
_OUTAGE_SQLSTATES = ("08",  # connection exception
                     "57P01", "57P02", "57P03",  # admin/crash shutdown, cannot connect now
                     "53300")  # too many connections (a full pooler or server)
# Errors raised before any SQLSTATE exists (at connect) that no amount of waiting fixes.
_PERMANENT_TEXT = ("password authentication failed", "authentication failed", "does not exist",
                   "no pg_hba.conf entry", "permission denied", "no such table", "no such column",
                   "file is not a database", "malformed", "unable to open database file",
                   "readonly database", "read-only")


def is_outage(error: BaseException) -> bool:
    """A lost or refused connection (worth waiting for), as opposed to an error that waiting will
    not fix: a missing table, a refused password, a permission error, a bad statement."""
    e: BaseException | None = error
    while e is not None:
        if isinstance(e, sqlalchemy.exc.DBAPIError):
            if e.connection_invalidated:
                return True
            code = getattr(e.orig, "pgcode", None)
            if code:
                return code.startswith(_OUTAGE_SQLSTATES)
            if isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
                text = str(e.orig).lower()
                return not any(marker in text for marker in _PERMANENT_TEXT)
            return False
        if isinstance(e, (sqlalchemy.exc.DisconnectionError, sqlalchemy.exc.TimeoutError)):
            return True
        e = e.__cause__ or e.__context__
    return False


def first_line(e: BaseException) -> str:
    cause = getattr(e, "orig", None) or e.__cause__ or e
    text = str(cause).strip().splitlines()
    return text[0] if text else type(cause).__name__


class Outage:
    """This process's view of the database's health, shared by all its threads: one log line when
    an outage starts, one every OUTAGE_LOG_EVERY seconds while it lasts, one when it is over."""

    def __init__(self, url: str, timeout: float):
        self.url, self.timeout = url, timeout
        self._lock = threading.Lock()
        self._waiting = 0  # storage calls now waiting for the database
        self._since: float | None = None
        self._logged = 0.0
        self.ended_at = -float("inf")  # when the last outage ended (or a waiting call gave up)

    def seen(self, e: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            if self._since is None:
                self._since = self._logged = now
                log.warning("database %s unreachable (%s); waiting for it to come back "
                            "(up to %.0fs)", mask(self.url), first_line(e), self.timeout)
            elif now - self._logged >= OUTAGE_LOG_EVERY:
                self._logged = now
                log.warning("database still unreachable after %.0fs (%s)", now - self._since,
                            first_line(e))

    def started_waiting(self) -> None:
        with self._lock:
            self._waiting += 1

    def stopped_waiting(self, recovered: bool) -> None:
        """A waiting call ended: it got through (the database is back) or it gave up."""
        now = time.monotonic()
        with self._lock:
            self._waiting -= 1
            self.ended_at = now  # either way, the quiet period before reaping starts again
            if recovered and self._since is not None:
                log.warning("database %s reachable again after %.1fs; carrying on",
                            mask(self.url), now - self._since)
                self._since = None
            elif self._waiting == 0:
                self._since = None  # the next outage gets its own first line

    def quiet_for(self) -> float:
        """Seconds since this process last waited for the database (0 while it waits)."""
        with self._lock:
            return 0.0 if self._waiting else time.monotonic() - self.ended_at
