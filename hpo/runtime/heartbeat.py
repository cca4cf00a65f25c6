"""One heartbeat thread per worker process, beating for whichever trial the process runs.

The storage tells it about a trial the moment the trial starts running (created or taken from
the queue), before the sampler's work in ``study.ask``; the thread records the trial's first
beat a moment later (``first_beat_after``, a quarter of the grace period at most, so a slow ask
never looks like a dead worker), then one every interval. A trial over before its first beat was
due (milliseconds of orchestration, a refused proposal) costs the database nothing.
Optuna's own heartbeat is per trial and lives inside ``study.optimize``.

A worker cut off from the database records its trial's heartbeat first thing when the database
answers again (``beat_now``, hpo.store.retrying_storage's ``on_reconnect``). After every beat it reads its
trial's state: a trial failed by another worker's stale-trial check while this one lives sets
``lost``, and the runner stops training it (its retry re-runs it; hpo.runtime.retries takes the death
back).
"""

from __future__ import annotations

import logging
import threading
import time

import sqlalchemy
from optuna.trial import TrialState

from hpo.store.retrying_storage import RetryingStorage

log = logging.getLogger(__name__)

FIRST_BEAT_AFTER = 1.0  # seconds, capped at a quarter of the grace period


class Heartbeat(threading.Thread):
    def __init__(self, storage: RetryingStorage):
        super().__init__(name="hpo-heartbeat", daemon=True)
        self.storage = storage
        self.interval = float(storage.get_heartbeat_interval() or 0)
        self.first_beat_after = min(FIRST_BEAT_AFTER, storage.grace_period() / 4)
        self._beating_for: int | None = None  # the trial id this process runs, if any
        self._since = 0.0  # when that trial was claimed (monotonic)
        self._lock = threading.Lock()
        self._wake = threading.Event()  # a trial claimed or let go, or halt
        self.halt = threading.Event()
        self.lost = threading.Event()  # the tracked trial was failed under us (cleared by track)
        storage.on_reconnect = self.beat_now

    def track(self, trial_id: int | None) -> None:
        """Beat for this trial from now on (None: no trial)."""
        with self._lock:
            self._beating_for, self._since = trial_id, time.monotonic()
            self.lost.clear()
        self._wake.set()

    def beat_now(self) -> None:
        """Record the tracked trial's heartbeat at once, on the caller's thread (the storage's
        retry loop calls it when the database answers again; an outage error propagates)."""
        with self._lock:
            trial_id = self._beating_for
        if trial_id is not None and self.interval:
            self.storage.record_heartbeat(trial_id)

    def run(self) -> None:
        if not self.interval:
            return
        beat_for, beat_at = None, 0.0  # the last beat recorded
        while not self.halt.is_set():
            self._wake.clear()  # before reading: a claim after this wakes the wait below
            with self._lock:
                trial_id, since = self._beating_for, self._since
            now = time.monotonic()
            due = (None if trial_id is None else
                   since + self.first_beat_after if trial_id != beat_for else
                   beat_at + self.interval)
            if due is None or now < due:
                self._wake.wait(None if due is None else due - now)
                continue
            try:
                self.storage.record_heartbeat(trial_id)
                if not self.storage.call(self._running, trial_id):
                    self._failed_under_us(trial_id)
            except Exception as e:  # the database gave up on us: the trial will be reaped
                log.warning("heartbeat of trial id %d failed: %s", trial_id, e)
            beat_for, beat_at = trial_id, now

    def _running(self, trial_id: int) -> bool:
        """Whether the trial is still RUNNING, read from the database (not Optuna's cache)."""
        # Optuna has no public uncached state read; its ORM models are its schema
        # (tests/test_optuna_contract.py fails if they change).
        from optuna.storages._rdb import models  # private: no public uncached read

        with self.storage.engine.connect() as conn:
            state = conn.execute(sqlalchemy.select(models.TrialModel.state).where(
                models.TrialModel.trial_id == trial_id)).scalar()
        return state != TrialState.FAIL

    def _failed_under_us(self, trial_id: int) -> None:
        # The worker stops tracking a trial before it tells its end (hpo.runtime.loop): a FAIL seen
        # while the trial is still tracked was written by someone else's stale-trial check.
        with self._lock:
            if self._beating_for == trial_id and not self.lost.is_set():
                log.warning("trial id %d was failed by a stale-trial check while this worker "
                            "ran it: stopping it", trial_id)
                self.lost.set()

    def stop(self) -> None:
        self.halt.set()
        self._wake.set()
