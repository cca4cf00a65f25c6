"""The one place that reads storage URLs: resolution, masking, engine settings, and the one retry
layer that rides out database outages.

``--storage`` wins, then ``HPO_STORAGE``, then an embedded SQLite file ``hpo.db`` in the working
directory. SQLite runs in WAL mode with a long busy timeout so that several local workers and
optuna-dashboard can share it; PostgreSQL is the shared, many-machine database.

``open_storage`` returns a :class:`RetryingStorage`: Optuna's own ``RDBStorage`` behind Optuna's
trial cache (``optuna.storages.get_storage``), wrapped once, at the public ``BaseStorage``
methods, by a retry loop. Only a lost or refused connection counts as an outage; any other
database error fails at once with one line.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat  # the heartbeat interface fail_stale_trials checks
from optuna.trial import TrialState

from hpo.errors import HpoError, HpoFailure
from hpo.runtime.retries import MAX_RETRIES, RetryStale

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///hpo.db"
SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg2")
OUTAGE_LOG_EVERY = 10.0  # seconds between "still unreachable" lines
# Seconds between retries while the database is away: a returned database is noticed within a
# second (a refused connection costs the server nothing), so the heartbeats of live trials
# resume before any stale-trial check could mistake them for dead ones (hpo.runtime.reaper).
FIRST_BACKOFF, MAX_BACKOFF = 0.25, 1.0


class StorageError(HpoFailure):
    """The database answered with an error that waiting will not fix (missing table, refused
    password, permission): one line, at once."""


class DatabaseUnavailable(HpoFailure):
    """The database stayed unreachable for longer than the outage timeout."""


def resolve_url(flag: str | None) -> str:
    return flag or os.environ.get("HPO_STORAGE") or DEFAULT_STORAGE


def mask(url: str) -> str:
    """The URL with its password replaced by ***, safe for logs and errors."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable storage URL>"


def parse_url(url: str) -> sqlalchemy.engine.URL:
    if "://" not in url:
        hint = f"sqlite:///{url}" if url.endswith(".db") else "postgresql+psycopg2://user:pass@host/db"
        raise HpoError(f"storage {url!r} is not a URL; pass e.g. {hint}")
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:
        raise HpoError(f"storage URL {mask(url)!r} is malformed; expected e.g. "
                       "postgresql+psycopg2://user:pass@host:5432/db or sqlite:///hpo.db") from None
    if parsed.drivername not in SCHEMES:
        raise HpoError(f"storage scheme {parsed.drivername!r} is not supported; use one of "
                       f"{', '.join(SCHEMES)}")
    return parsed


def sqlite_file(url: str) -> Path | None:
    """The file of an embedded database URL; None for a server or an in-memory database."""
    parsed = parse_url(url)
    if parsed.drivername == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(parsed.database)
    return None


def engine_kwargs(url: sqlalchemy.engine.URL) -> dict[str, Any]:
    if url.drivername == "sqlite":
        return {"connect_args": {"timeout": 60}}
    # Five connections per worker process: its trial loop, the heartbeat and reaper threads, and
    # the runner's side threads (hpo.runtime.runner), which seldom all hold one; a sixth caller waits.
    # No pre-ping (a round trip per session): a dead pooled connection fails its first
    # statement as "invalidated", and the retry layer tries again on a new one.
    return {
        "pool_size": 3, "max_overflow": 2, "pool_recycle": 1800,
        "connect_args": {"connect_timeout": 5, "application_name": "hpo"},
    }


# -- what counts as an outage ------------------------------------------------------------------

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


# -- the one retry layer -------------------------------------------------------------------------

_DELEGATED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies",
    "set_trial_param", "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id",
    "get_trial_param", "set_trial_intermediate_value", "set_trial_user_attr",
    "set_trial_system_attr", "get_trial", "get_all_trials", "get_n_trials", "get_best_trial",
    "get_trial_params", "get_trial_user_attrs", "get_trial_system_attrs", "record_heartbeat",
)
_OPTUNA_ERRORS = (KeyError, ValueError, optuna.exceptions.DuplicatedStudyError,
                  optuna.exceptions.UpdateFinishedTrialError)


class RetryingStorage(BaseStorage, BaseHeartbeat):
    """Optuna's cached RDB storage with every public call retried through database outages.

    The retry sits at this one layer: the wrapped storage's own calls are never retried again, so
    a call gives up within ``outage_timeout`` plus one backoff step. ``on_claim`` is told the id
    of every trial this process starts running (created RUNNING or taken from the queue), at the
    moment it starts, so that its heartbeat begins before the sampler's (possibly slow) work.
    """

    def __init__(self, rdb: RDBStorage, outage_timeout: float):
        self.rdb = rdb
        self.url = rdb.url
        self._inner = optuna.storages.get_storage(rdb)  # Optuna's trial cache over the RDB
        self.outage = Outage(rdb.url, outage_timeout)
        self.on_claim: Callable[[int, bool], None] | None = None  # (trial id, freshly created)
        self.stale_trial_ids: Callable[[int], list[int]] | None = None  # set by hpo.runtime.reaper
        # Called first thing once the database answers again after an outage, before the call
        # that waited (hpo.runtime.heartbeat: the running trial's heartbeat).
        self.on_reconnect: Callable[[], None] | None = None
        self._local = threading.local()

    @property
    def engine(self) -> sqlalchemy.engine.Engine:
        return self.rdb.engine

    def call(self, method: Callable, *args, **kwargs):
        if getattr(self._local, "inside", False):  # nested: the outer call does the retrying
            return method(*args, **kwargs)
        self._local.inside = True
        try:
            return self._retry(method, *args, **kwargs)
        finally:
            self._local.inside = False

    def _retry(self, method: Callable, *args, **kwargs):
        start, delay, waiting = time.monotonic(), FIRST_BACKOFF, False
        recovered = False
        try:
            while True:
                try:
                    if waiting and self.on_reconnect is not None:
                        self._reconnected()
                    result = method(*args, **kwargs)
                    recovered = True
                    return result
                except _OPTUNA_ERRORS:
                    raise  # Optuna's own signals (no such study, finished trial): not ours
                except Exception as e:
                    if not is_outage(e):
                        if isinstance(e, (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error,
                                          optuna.exceptions.StorageInternalError)):
                            raise StorageError(f"database {mask(self.url)}: {first_line(e)}") from e
                        raise
                    waited = time.monotonic() - start
                    if waited >= self.outage.timeout:
                        raise DatabaseUnavailable(
                            f"database {mask(self.url)} unreachable for {waited:.0f}s, longer "
                            f"than the outage timeout ({self.outage.timeout:g}s): "
                            f"{first_line(e)}; giving up") from None
                    if not waiting:
                        self.outage.started_waiting()
                        waiting = True
                    self.outage.seen(e)
                    time.sleep(min(delay, max(0.05, self.outage.timeout - waited)))
                    delay = min(delay * 2, MAX_BACKOFF)
        finally:
            if waiting:
                self.outage.stopped_waiting(recovered)

    def _reconnected(self) -> None:
        """``on_reconnect``; an outage error goes to the retry loop, any other is only logged
        (it is not the waiting call's error)."""
        try:
            self.on_reconnect()
        except Exception as e:
            if is_outage(e):
                raise
            log.warning("heartbeat on reconnecting failed: %s", first_line(e))

    # Trials this process starts running: the heartbeat starts with them.
    def create_new_trial(self, study_id: int, template_trial=None) -> int:
        trial_id = self.call(self._inner.create_new_trial, study_id, template_trial)
        if template_trial is None or template_trial.state == TrialState.RUNNING:
            self._claimed(trial_id, fresh=True)
        return trial_id

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        changed = self.call(self._inner.set_trial_state_values, trial_id, state, values)
        if changed and state == TrialState.RUNNING:  # a waiting trial taken from the queue
            self._claimed(trial_id, fresh=False)
        return changed

    def _claimed(self, trial_id: int, fresh: bool) -> None:
        if self.on_claim is not None:
            self.on_claim(trial_id, fresh)

    # The heartbeat interface Optuna's fail_stale_trials uses.
    def get_heartbeat_interval(self) -> int | None:
        return self.rdb.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self):
        return self.rdb.get_heartbeat_stale_trial_callback()

    def grace_period(self) -> float:
        return float(self.rdb.grace_period or 2 * (self.get_heartbeat_interval() or 0))

    # Private in Optuna's BaseHeartbeat, but abstract there: fail_stale_trials asks it which
    # trials to fail. hpo.runtime.reaper supplies the answer (tests/test_optuna_contract.py).
    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        if self.stale_trial_ids is not None:
            return self.stale_trial_ids(study_id)
        return self.call(self.rdb._get_stale_trial_ids, study_id)

    def remove_session(self) -> None:
        self._inner.remove_session()

    def dispose(self) -> None:
        """Release this process's connections now, not at interpreter exit."""
        self.rdb.engine.dispose()

    # Pickled as Optuna's storages are (e.g. to hand to another process): the locks, the
    # thread-local flag and this process's hooks stay behind; the copy makes its own. The
    # RDB storage pickles itself without its engine and opens a new one.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_local", "outage", "on_claim", "stale_trial_ids", "on_reconnect"):
            del state[name]
        state["outage_timeout"] = self.outage.timeout
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        timeout = state.pop("outage_timeout")
        self.__dict__.update(state)
        self.outage = Outage(self.url, timeout)
        self.on_claim = self.stale_trial_ids = self.on_reconnect = None
        self._local = threading.local()


def _delegate(name: str):
    def method(self, *args, **kwargs):
        return self.call(getattr(self._inner, name), *args, **kwargs)

    method.__name__ = name
    return method


for _name in _DELEGATED:
    setattr(RetryingStorage, _name, _delegate(_name))
abc.update_abstractmethods(RetryingStorage)


# -- opening ------------------------------------------------------------------------------------

@contextlib.contextmanager
def _schema_lock(url: str, parsed: sqlalchemy.engine.URL):
    """Serialise Optuna's table creation: workers starting together on a fresh PostgreSQL
    database otherwise race in CREATE TABLE and one of them fails."""
    if parsed.drivername == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            yield
            return
        with open(f"{parsed.database}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        return
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args=engine_kwargs(parsed)["connect_args"])
    try:
        # A transaction-scoped lock, taken by polling: a worker waiting for it holds no server
        # connection, so through a transaction-pooling PgBouncer with fewer server connections
        # than starting workers the holder still gets the second connection it needs.
        while True:
            with engine.begin() as conn:
                taken = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_xact_lock(:key)"),
                                     {"key": _LOCK_KEY}).scalar()
                if taken:
                    yield
                    return
            time.sleep(0.1 + random.random() * 0.4)
    finally:
        engine.dispose()


_LOCK_KEY = 0x6870_6F5F  # "hpo_": any constant shared by all hpo processes


def open_storage(flag: str | None = None, *, heartbeat: int | None = None, grace: int | None = None,
                 outage_timeout: float = 600.0, create: bool = True,
                 max_retries: int = MAX_RETRIES) -> RetryingStorage:
    """Connect to the study database, failing with one line if it is unreachable or refuses us.

    With ``heartbeat`` set, trials of dead workers are failed after ``grace`` seconds and queued
    again (keeping their user attributes, hence their checkpoint), up to ``max_retries`` deaths
    (hpo.runtime.retries).
    """
    url = resolve_url(flag)
    parsed = parse_url(url)
    path = sqlite_file(url)
    if path is not None:
        if not path.parent.exists():
            raise HpoError(f"storage {url!r}: folder {str(path.parent)!r} does not exist")
        if not create and not path.exists():
            raise HpoError(f"storage {url!r}: {str(path)!r} does not exist; pass the --storage "
                           "the workers used (or set HPO_STORAGE)")
        _check_sqlite_file(url, path, create)
    retry = RetryStale(max_retries)
    try:
        # Only a command that may create the tables takes the lock (and its lock file).
        with _schema_lock(url, parsed) if create else contextlib.nullcontext():
            rdb = RDBStorage(
                url, engine_kwargs=engine_kwargs(parsed), heartbeat_interval=heartbeat,
                grace_period=grace,
                heartbeat_stale_trial_callback=retry if heartbeat else None)
    except RuntimeError as e:
        if "no longer compatible with the table schema" not in str(e):
            raise
        raise HpoFailure(f"storage {mask(url)}: its tables were written by another Optuna "
                         f"version than this one ({optuna.__version__}); use the Optuna that "
                         "wrote it, or run `optuna storage upgrade` for an older database") from None
    except Exception as e:
        if isinstance(e, (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError,
                          sqlite3.Error)) or is_outage(e):
            raise HpoFailure(f"cannot open storage {mask(url)}: {first_line(e)}") from None
        raise
    storage = RetryingStorage(rdb, outage_timeout)
    retry.storage = storage
    return storage


def _check_sqlite_file(url: str, path: Path, writing: bool) -> None:
    """One line, naming the file and what to do, for a file that cannot be our database. A
    command that only reads leaves the file exactly as it is."""
    if writing and path.exists() and not os.access(path, os.W_OK):
        raise HpoFailure(f"storage {url!r}: {str(path)!r} is read-only; workers must write to it "
                         "(fix its permissions, or copy it and open the copy)")
    # The engine's busy timeout: another worker creating the tables holds the file for seconds.
    busy_timeout = engine_kwargs(parse_url(url))["connect_args"]["timeout"]
    try:
        if not writing:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                    timeout=busy_timeout)) as conn:
                conn.execute("SELECT name FROM sqlite_master").fetchall()
            return
        _use_wal(path, busy_timeout)
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            raise HpoFailure(f"storage {url!r}: {str(path)!r} stayed locked by another process for "
                             f"{busy_timeout}s ({e}); stop whatever holds it, then retry") from None
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


WAL_ATTEMPT = 0.5  # seconds one attempt to switch to WAL waits for the file


def _journal_mode(conn: sqlite3.Connection) -> str:
    return conn.execute("PRAGMA journal_mode").fetchone()[0].lower()


def _not_sqlite(url: str, path: Path, e: Exception) -> HpoFailure:
    return HpoFailure(f"storage {url!r}: {str(path)!r} is not an SQLite database ({e}); pass "
                      "another file, or move this one away")


def artifact_dir(flag: str | None, storage_url: str) -> Path:
    """Where checkpoints, curves and configs go: flag, HPO_ARTIFACTS, else beside the database.

    Workers on several machines need this to be one shared location (e.g. an NFS mount).
    """
    chosen = flag or os.environ.get("HPO_ARTIFACTS")
    if chosen:
        return Path(chosen)
    parsed = sqlalchemy.engine.make_url(storage_url)
    if parsed.drivername == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(parsed.database).parent / "hpo-artifacts"
    return Path("hpo-artifacts")


def check_artifact_folder(flag: str | None, storage_url: str) -> None:
    path = artifact_dir(flag, storage_url)
    if path.exists() and not path.is_dir():
        raise HpoError(f"--artifacts {str(path)!r} is invalid: it is a file; allowed: a folder "
                       "(created if missing)")


def open_artifact_store(flag: str | None, storage_url: str):
    from optuna.artifacts import FileSystemArtifactStore

    path = artifact_dir(flag, storage_url)
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))
