"""One heartbeat thread per worker process, beating for whichever trial the process runs.

The storage tells it about a trial the moment the trial starts running (created or taken from
the queue), before the sampler's work in ``study.ask``, so a slow ask never looks like a dead
worker. Optuna's own heartbeat is per trial and lives inside ``study.optimize``.
"""

from __future__ import annotations

import logging
import threading

from hpo.storage import RetryingStorage

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    def __init__(self, storage: RetryingStorage):
        super().__init__(name="hpo-heartbeat", daemon=True)
        self.storage = storage
        self.interval = float(storage.get_heartbeat_interval() or 0)
        self._beating_for: int | None = None  # the trial id this process runs, if any
        self._lock = threading.Lock()
        self.halt = threading.Event()

    def track(self, trial_id: int | None) -> None:
        """Beat for this trial from now on (None: no trial)."""
        with self._lock:
            self._beating_for = trial_id  # the claim itself recorded the first beat

    def run(self) -> None:
        if not self.interval:
            return
        while not self.halt.wait(self.interval):
            with self._lock:
                trial_id = self._beating_for
            if trial_id is None:
                continue
            try:
                self.storage.record_heartbeat(trial_id)
            except Exception as e:  # the database gave up on us: the trial will be reaped
                log.warning("heartbeat of trial id %d failed: %s", trial_id, e)

    def stop(self) -> None:
        self.halt.set()
