"""The one place that reads storage URLs: resolution, masking, engine settings, outage retries.

``--storage`` wins, then ``HPO_STORAGE``, then an embedded SQLite file ``hpo.db`` in the working
directory. SQLite runs in WAL mode with a long busy timeout so that several local workers and
optuna-dashboard can share it; PostgreSQL is the shared, many-machine database.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._rdb import models

from hpo.errors import HpoError

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///hpo.db"
SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg2")


def resolve_url(flag: str | None) -> str:
    return flag or os.environ.get("HPO_STORAGE") or DEFAULT_STORAGE


def mask(url: str) -> str:
    """The URL with its password replaced by ***, safe for logs and errors."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable storage URL>"


def _parse(url: str) -> sqlalchemy.engine.URL:
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


def engine_kwargs(url: sqlalchemy.engine.URL) -> dict[str, Any]:
    if url.drivername == "sqlite":
        return {"connect_args": {"timeout": 60}}
    # A worker process uses at most three connections at once (its trial loop, the heartbeat
    # thread, the stale-trial reaper). No pre-ping (a round trip per session): a dead pooled
    # connection fails its first statement as "invalidated", and _retrying tries again on a new one.
    return {
        "pool_size": 3, "max_overflow": 2, "pool_recycle": 1800,
        "connect_args": {"connect_timeout": 5, "application_name": "hpo"},
    }


REAPER_THREAD_NAME = "stale-trial-reaper"  # hpo.worker.StaleTrialReaper
OUTAGE_LOG_EVERY = 10.0  # seconds between "still unreachable" lines
MAX_BACKOFF = 10.0  # seconds between retries while the database is unreachable
_TRANSIENT = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)


def _is_transient(e: BaseException) -> bool:
    """A lost or refused connection (worth waiting for), as opposed to a bad request."""
    while e is not None:
        if isinstance(e, _TRANSIENT) or (isinstance(e, sqlalchemy.exc.DBAPIError)
                                         and e.connection_invalidated):
            return True
        e = e.__cause__ or e.__context__
    return False


class ResilientRDBStorage(RDBStorage):
    """RDBStorage that rides out database outages and fails orphaned trials reliably.

    * Every storage call that fails because the database is unreachable is retried with
      exponential backoff (logging while it waits) for up to ``outage_timeout`` seconds.
    * Stale trials also include RUNNING trials that never recorded a heartbeat (their worker died
      between creating the trial and its first heartbeat), once they have been seen for longer
      than the grace period; plain Optuna never fails those.
    * Right after an outage no trial is declared stale until a full grace period has passed, so
      workers that were merely waiting for the database are not mistaken for dead ones.
    """

    def __init__(self, url: str, *, outage_timeout: float = 600.0, **kwargs: Any):
        self.outage_timeout = outage_timeout
        self._healthy_since = -float("inf")  # healthy from the start: reap orphans right away
        self._first_seen_without_heartbeat: dict[int, float] = {}
        self._last_stale_check = -float("inf")
        self._outage_since: float | None = None  # when this process first saw the outage
        self._outage_logged = 0.0
        self._seen_lock = threading.Lock()
        super().__init__(url, **kwargs)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        del state["_seen_lock"]
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        state["_seen_lock"] = threading.Lock()
        super().__setstate__(state)

    # One outage, however many threads (trial loop, heartbeat, reaper) notice it: one line when
    # it starts, one every OUTAGE_LOG_EVERY seconds while it lasts, one when it is over.
    def _outage_log(self, e: BaseException) -> None:
        now = time.monotonic()
        with self._seen_lock:
            if self._outage_since is None:
                self._outage_since = self._outage_logged = now
                log.warning("database %s unreachable (%s); waiting for it to come back "
                            "(up to %.0fs)", mask(self.url), _first_line(e), self.outage_timeout)
            elif now - self._outage_logged >= OUTAGE_LOG_EVERY:
                self._outage_logged = now
                log.warning("database still unreachable after %.0fs (%s)",
                            now - self._outage_since, _first_line(e))

    def _outage_over(self) -> None:
        now = time.monotonic()
        with self._seen_lock:
            if self._outage_since is not None:
                log.warning("database %s reachable again after %.1fs; carrying on", mask(self.url),
                            now - self._outage_since)
                self._outage_since = None
            self._healthy_since = now

    def _grace(self) -> float:
        return float(self.grace_period or 2 * (self.heartbeat_interval or 0))

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # Optuna checks at every trial start; the worker's reaper thread checks every heartbeat
        # interval anyway, so a trial start skips the check (three round trips) when one ran
        # within the last interval.
        now = time.monotonic()
        if (threading.current_thread().name != REAPER_THREAD_NAME
                and now - self._last_stale_check < (self.heartbeat_interval or 0)):
            return []
        self._last_stale_check = now
        # After an outage, heartbeat threads (ours and other workers') may still be in a backoff
        # sleep: give them the grace period plus the longest backoff before judging anyone.
        if now - self._healthy_since < self._grace() + MAX_BACKOFF:
            return []
        stale = super()._get_stale_trial_ids(study_id)
        with optuna.storages._rdb.storage._create_scoped_session(self.scoped_session) as session:
            orphans = [t.trial_id for t in session.query(models.TrialModel)
                       .filter(models.TrialModel.study_id == study_id)
                       .filter(models.TrialModel.state == optuna.trial.TrialState.RUNNING)
                       .filter(~models.TrialModel.heartbeats.any()).all()]
        now = time.monotonic()
        with self._seen_lock:
            seen = {tid: self._first_seen_without_heartbeat.get(tid, now) for tid in orphans}
            self._first_seen_without_heartbeat = seen
        return stale + [tid for tid, first in seen.items() if now - first > self._grace()]


def _retrying(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        delay, waited = 0.5, 0.0
        while True:
            try:
                result = method(self, *args, **kwargs)
            except Exception as e:
                if not _is_transient(e) or waited >= self.outage_timeout:
                    raise
                self._outage_log(e)
                self._healthy_since = float("inf")  # no reaping while the database is away
                time.sleep(delay)
                waited += delay
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            if waited:
                self._outage_over()
            return result

    return wrapper


def _first_line(e: BaseException) -> str:
    cause = getattr(e, "orig", None) or e.__cause__ or e
    text = str(cause).strip().splitlines()
    return text[0] if text else type(cause).__name__


_RETRIED = [
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies", "create_new_trial",
    "set_trial_param", "get_trial_id_from_study_id_trial_number", "get_trial_param",
    "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
    "set_trial_system_attr", "get_trial", "get_all_trials", "get_best_trial",
    "get_trial_user_attrs", "get_trial_system_attrs", "record_heartbeat", "_get_stale_trial_ids",
    # Optuna's cached storage calls these private ones directly.
    "_create_new_trial", "_get_best_trial_id", "_get_trials", "_set_trial_param",
]


for _name in _RETRIED:
    setattr(ResilientRDBStorage, _name, _retrying(getattr(ResilientRDBStorage, _name)))


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
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})
    finally:
        engine.dispose()


_LOCK_KEY = 0x6870_6F5F  # "hpo_": any constant shared by all hpo processes


def open_storage(flag: str | None = None, *, heartbeat: int | None = None, grace: int | None = None,
                 outage_timeout: float = 600.0) -> ResilientRDBStorage:
    """Connect to the study database, failing with one line if it is unreachable or refuses us.

    With ``heartbeat`` set, trials of dead workers are failed after ``grace`` seconds and queued
    again (keeping their user attributes, hence their checkpoint) by Optuna's retry callback.
    """
    url = resolve_url(flag)
    parsed = _parse(url)
    if parsed.drivername == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        if not path.parent.exists():
            raise HpoError(f"storage {url!r}: folder {str(path.parent)!r} does not exist")
        with sqlite3.connect(path) as conn:  # WAL persists in the file: readers never block writers
            conn.execute("PRAGMA journal_mode=WAL")
    try:
        with _schema_lock(url, parsed):
            return ResilientRDBStorage(
                url, engine_kwargs=engine_kwargs(parsed), outage_timeout=outage_timeout,
                heartbeat_interval=heartbeat, grace_period=grace,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=3, inherit_intermediate_values=True) if heartbeat else None)
    except Exception as e:
        if isinstance(e, (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError,
                          sqlite3.Error)) or _is_transient(e):
            raise HpoError(f"cannot open storage {mask(url)}: {_first_line(e)}") from None
        raise


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


def open_artifact_store(flag: str | None, storage_url: str):
    from optuna.artifacts import FileSystemArtifactStore

    path = artifact_dir(flag, storage_url)
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))
