"""One heartbeat thread per worker process, beating for whichever trial the process runs.

The storage tells it about a trial the moment the trial starts running (created or taken from
the queue), before the sampler's work in ``study.ask``; the thread records the trial's first
beat a moment later (``first_beat_after``, a quarter of the grace period at most, so a slow ask
never looks like a dead worker), then one every interval. A trial over before its first beat was
due (milliseconds of orchestration, a refused proposal) costs the database nothing.
Optuna's own heartbeat is per trial and lives inside ``study.optimize``.
"""

from __future__ import annotations

import logging
import threading
import time

from hpo.storage import RetryingStorage

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

    def track(self, trial_id: int | None) -> None:
        """Beat for this trial from now on (None: no trial)."""
        with self._lock:
            self._beating_for, self._since = trial_id, time.monotonic()
        self._wake.set()

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
            except Exception as e:  # the database gave up on us: the trial will be reaped
                log.warning("heartbeat of trial id %d failed: %s", trial_id, e)
            beat_for, beat_at = trial_id, now

    def stop(self) -> None:
        self.halt.set()
        self._wake.set()
