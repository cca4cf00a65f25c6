"""The one retry layer: Optuna's storage with every public call retried through database outages.

``RetryingStorage`` wraps Optuna's own ``RDBStorage`` behind Optuna's trial cache
(``optuna.storages.get_storage``) once, at the public ``BaseStorage`` methods. Only a lost or
refused connection counts as an outage (hpo.store.outage); any other database error fails at once
with one line.
"""

from __future__ import annotations

import abc
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat  # the heartbeat interface fail_stale_trials checks
from optuna.trial import TrialState

from hpo.errors import HpoFailure
from hpo.store.outage import Outage, first_line, is_outage
from hpo.store.urls import mask

log = logging.getLogger(__name__)

# Seconds between retries while the database is away: a returned database is noticed within a
# second (a refused connection costs the server nothing), so the heartbeats of live trials
# resume before any stale-trial check could mistake them for dead ones (hpo.runtime.reaper).
FIRST_BACKOFF, MAX_BACKOFF = 0.25, 1.0


class StorageError(HpoFailure):
    """The database answered with an error that waiting will not fix (missing table, refused
    password, permission): one line, at once."""


class DatabaseUnavailable(HpoFailure):
    """The database stayed unreachable for longer than the outage timeout."""


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
