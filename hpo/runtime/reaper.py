"""Failing (and so re-queueing) the trials of dead workers.

A trial is stale when its heartbeat is older than the grace period, or when it has been RUNNING
without any heartbeat for longer than that (its worker died between creating the trial and its
first heartbeat, which a live worker records within a quarter of the grace period).

Only time in which the database was reachable counts: a heartbeat is late by the time since the
latest of its own beat, the database server's start (PostgreSQL's ``pg_postmaster_start_time``:
a checker that arrives after a restart sees it) and the end of this process's own last wait for
the database (a checker that was cut off itself). No trial is judged while this process waits.
A worker that was cut off records its trial's heartbeat first thing when the database answers
again (hpo.runtime.heartbeat), within a second of its return (hpo.store.retrying_storage's backoff): so an outage or
restart of any length never makes a live trial stale.

Every worker runs a reaper thread, so dead workers' trials come back however long the surviving
workers' own trials take. Checks are throttled per study, and nothing ever switches them off.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from datetime import timedelta

import optuna
import sqlalchemy
from optuna.trial import TrialState

from hpo.store.retrying_storage import MAX_BACKOFF, RetryingStorage

log = logging.getLogger(__name__)


class Reaper:
    def __init__(self, storage: RetryingStorage):
        self.storage = storage
        self.interval = float(storage.get_heartbeat_interval() or 0)
        self._last_check: dict[str, float] = {}  # study name -> monotonic time of its last check
        self._first_seen_without_heartbeat: dict[int, float] = {}
        self._lock = threading.Lock()
        storage.stale_trial_ids = self.stale_trial_ids  # what fail_stale_trials fails

    def reap(self, study: optuna.Study, force: bool = False) -> None:
        """Fail and re-queue the study's stale trials, at most once per heartbeat interval."""
        if not self.interval:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_check.get(study.study_name, -1e18) < self.interval:
                return
            self._last_check[study.study_name] = now
        with warnings.catch_warnings():  # experimental in Optuna since 2.9, stable in practice
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        grace = self.storage.grace_period()
        # Beats held up by an outage reach the database within the longest backoff of its return.
        settle = grace + MAX_BACKOFF
        if self.storage.outage.quiet_for() < settle:
            return []
        now_db, up_for, running = self.storage.call(self._running_heartbeats, study_id)
        # Reachable time: since this process last waited, and since the server started.
        if min(self.storage.outage.quiet_for(), up_for) < settle:
            return []
        now = time.monotonic()
        with self._lock:
            seen = {trial_id: self._first_seen_without_heartbeat.get(trial_id, now)
                    for trial_id, beat in running if beat is None}
            self._first_seen_without_heartbeat = seen
        late = [trial_id for trial_id, beat in running
                if beat is not None and now_db - beat > timedelta(seconds=grace)]
        return late + [trial_id for trial_id, first in seen.items() if now - first > grace]

    def _running_heartbeats(self, study_id: int):
        """(database time, seconds the server has been up (infinite where unknown: SQLite),
        [(trial id, last heartbeat or None)]) of the study's RUNNING trials, timed by the
        database's clock as Optuna's own check is."""
        # Optuna has no public query for heartbeats; its ORM models are its schema
        # (tests/test_optuna_contract.py fails if they change).
        from optuna.storages._rdb import models  # private: no public heartbeat query

        trial, beat = models.TrialModel, models.TrialHeartbeatModel
        with sqlalchemy.orm.Session(self.storage.engine) as session:
            now = session.execute(sqlalchemy.func.now()).scalar()
            up_for = float("inf")
            if session.bind.dialect.name == "postgresql":
                up_for = session.execute(sqlalchemy.text(
                    "SELECT now() - pg_postmaster_start_time()")).scalar().total_seconds()
            rows = (session.query(trial.trial_id, beat.heartbeat)
                    .outerjoin(beat, beat.trial_id == trial.trial_id)
                    .filter(trial.study_id == study_id, trial.state == TrialState.RUNNING)
                    .all())
        return now.replace(tzinfo=None), up_for, [(t, b.replace(tzinfo=None) if b else None)
                                                  for t, b in rows]


class ReaperThread(threading.Thread):
    """Runs ``reaper.reap`` on the given studies every heartbeat interval until halted."""

    def __init__(self, reaper: Reaper, studies):
        super().__init__(name="hpo-reaper", daemon=True)
        self.reaper, self.studies, self.halt = reaper, studies, threading.Event()

    def run(self) -> None:
        if not self.reaper.interval:  # no heartbeats, nothing to judge staleness by
            return
        while not self.halt.wait(self.reaper.interval):
            for study in self.studies():
                try:
                    self.reaper.reap(study)
                except Exception as e:  # never let bookkeeping kill the worker
                    log.warning("stale-trial check of %r failed: %s", study.study_name, e)
