"""Opening a study's storage: its database and the artifact store beside it.

SQLite runs in WAL mode with a long busy timeout so that several local workers and
optuna-dashboard can share it (hpo.store.sqlite_db); PostgreSQL is the shared, many-machine
database. ``open_storage`` returns the database behind the one retry layer
(hpo.store.retrying_storage).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.storages import RDBStorage

from hpo.errors import HpoError, HpoFailure
from hpo.runtime.retries import MAX_RETRIES, RetryStale
from hpo.store.outage import first_line, is_outage
from hpo.store.retrying_storage import RetryingStorage
from hpo.store.sqlite_db import BUSY_TIMEOUT, check_sqlite_file
from hpo.store.urls import mask, parse_url, resolve_url, sqlite_file


def engine_kwargs(url: sqlalchemy.engine.URL) -> dict[str, Any]:
    """The engine's connection settings for a database at ``url``."""
    if url.drivername == "sqlite":
        return {"connect_args": {"timeout": BUSY_TIMEOUT}}
    # Five connections per worker process: its trial loop, the heartbeat and reaper threads, and
    # the runner's side threads (hpo.runtime.runner), which seldom all hold one; a sixth caller waits.
    # No pre-ping (a round trip per session): a dead pooled connection fails its first
    # statement as "invalidated", and the retry layer tries again on a new one.
    return {
        "pool_size": 3, "max_overflow": 2, "pool_recycle": 1800,
        "connect_args": {"connect_timeout": 5, "application_name": "hpo"},
    }


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
        check_sqlite_file(url, path, create)
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
