"""The worker loop: check the budget, ask, run, tell the state the run ended in. Repeat.

Optuna's ``study.optimize`` does the same with callbacks and exceptions; here every outcome is
a value and every step is visible: the stale-trial check before each trial, the wait while the
budget is in flight elsewhere, the over-budget give-way, and a stop signal that queues the
trial's retry (with its checkpoint) before the trial is failed, so its slot is never lost.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from hpo.studies.budget import Tally, gives_way
from hpo.studies.counts import count_trials
from hpo.runtime.heartbeat import Heartbeat
from hpo.runtime.reaper import Reaper
from hpo.runtime.outcome import Ending, Outcome
from hpo.runtime.retries import alive_after_reap, queue_stopped
from hpo.store.retrying_storage import RetryingStorage
from hpo.store.tell import Told, tell

if TYPE_CHECKING:  # the runner imports torch; the loop itself does not need it
    from hpo.runtime.runner import TrialRunner

log = logging.getLogger("hpo.runtime.worker")

_TOLD = {Ending.COMPLETE: TrialState.COMPLETE, Ending.PRUNED: TrialState.PRUNED,
         Ending.FAILED: TrialState.FAIL, Ending.REJECTED: TrialState.FAIL}
# After a proposal is refused (already trained, or impossible) the next trial is asked of the
# fallback sampler (untried points of a finite space, else random); after GIVE_UP refusals in a
# row the worker leaves the study.
GIVE_UP, SPIN_AFTER = 200, 3


class WorkerLoop:
    def __init__(self, study: optuna.Study, storage: RetryingStorage, runner: TrialRunner,
                 budget: Callable[[], int], reaper: Reaper, heartbeat: Heartbeat,
                 stop: threading.Event, wait_interval: float, deadline: float | None = None,
                 on_trial_done: Callable[[Told, Tally], None] | None = None,
                 fallback_sampler: optuna.samplers.BaseSampler | None = None):
        self.study, self.storage, self.runner, self.budget = study, storage, runner, budget
        self.reaper, self.heartbeat, self.stop = reaper, heartbeat, stop
        self.wait_interval, self.deadline, self.on_trial_done = wait_interval, deadline, on_trial_done
        self._claimed: tuple[int, bool] | None = None  # (trial id, freshly created) of the last ask
        self._done: Told | None = None  # told, not yet shown
        self._rejected_in_a_row = 0
        self.fallback_sampler = fallback_sampler or optuna.samplers.RandomSampler()
        study_id = storage.get_study_id_from_name(study.study_name)
        self.tally = lambda: count_trials(storage, study_id)
        storage.on_claim = self._on_claim

    def _on_claim(self, trial_id: int, fresh: bool) -> None:
        self._claimed = (trial_id, fresh)
        self.heartbeat.track(trial_id)

    def run(self) -> int:
        """Run trials until the budget is spent, the deadline passes or a stop signal; return the
        number of trials this worker ran."""
        ran, waiting_logged, budget = 0, False, None
        while True:
            if self.stop.is_set():
                if self._done is not None and self.on_trial_done is not None:
                    self.on_trial_done(self._done, self.tally())
                break
            if self.deadline is not None and time.monotonic() >= self.deadline:
                log.info("--timeout reached: starting no more trials")
                break
            self.reaper.reap(self.study)
            counts = self.tally()
            if budget is None or counts.left(budget) <= 0:
                budget = self.budget()  # read again only when it matters: it may have been raised
            if self._done is not None and self.on_trial_done is not None:
                self.on_trial_done(self._done, counts)  # the same read serves the progress line
            self._done = None
            if counts.left(budget) <= 0:
                # Spent or in flight elsewhere. Stay while other trials run: if their worker
                # died, the reaper queues them again and this worker runs the retry.
                if counts.counts[TrialState.RUNNING] == 0:
                    break
                if not waiting_logged:
                    log.info("budget in use: waiting for %d running trial(s) to finish or be "
                             "recovered", counts.counts[TrialState.RUNNING])
                    waiting_logged = True
                self.stop.wait(self.wait_interval)
                continue
            waiting_logged = False
            if self._rejected_in_a_row >= GIVE_UP:
                log.warning("the last %d proposals were all impossible or already trained: the "
                            "space is spent; stopping with %d of the budget unused", GIVE_UP,
                            counts.left(budget))
                break
            if self._rejected_in_a_row >= SPIN_AFTER:
                # The sampler has only points already taken to offer (a grid whose last points
                # run elsewhere): look again in a moment rather than spin on refusals.
                self.stop.wait(self.wait_interval)
            if self.run_one(budget):
                ran += 1
        return ran

    def run_one(self, budget: int) -> bool:
        """Ask, run and tell one trial; False if it gave way to the budget or was refused."""
        # After a refusal the whole next trial (its suggestions happen while it runs) is
        # sampled by the fallback sampler.
        sampler = self.study.sampler
        if self._rejected_in_a_row:
            self.study.sampler = self.fallback_sampler
        try:
            return self._run_one(budget)
        finally:
            self.study.sampler = sampler

    def _run_one(self, budget: int) -> bool:
        self._claimed = None
        with warnings.catch_warnings():
            # Optuna warns that storage heartbeats belong to study.optimize; this loop runs its
            # own heartbeat (hpo.runtime.heartbeat), started by the storage when the trial is claimed.
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            trial = self.study.ask()
        known = self._claimed is not None
        trial_id, fresh = self._claimed or (None, True)
        try:
            if fresh and gives_way(self.study, trial.number, budget):
                trial.set_user_attr("end_reason", f"over budget: {budget} trials already started")
                self.heartbeat.track(None)
                tell(self.study, trial, None, TrialState.FAIL)
                log.info("trial %d gave way: the budget of %d was filled in a race", trial.number,
                         budget)
                return False
            outcome = self.runner.run(trial, queued=not (known and fresh))
            # Not tracked while told: a FAIL the heartbeat reads from here on may be our own.
            self.heartbeat.track(None)
            self._tell(trial, trial_id, outcome)
            if outcome.ending is Ending.REJECTED:
                self._rejected_in_a_row += 1
                log.info("trial %d not trained: %s", trial.number, outcome.reason)
                return False
            self._rejected_in_a_row = 0
            return True
        finally:
            self.heartbeat.track(None)


    def _tell(self, trial: optuna.Trial, trial_id: int | None, outcome: Outcome) -> None:
        if outcome.ending is Ending.STOPPED:
            # Queue the retry first: while both exist the budget counts the running original,
            # so no other worker can take this trial's slot, and nothing is lost if we die here.
            original = self.storage.get_trial(trial_id)
            if original.state == TrialState.FAIL:  # reaped meanwhile: the reaper queued it
                alive_after_reap(self.storage, self.study, trial_id)
                return
            queue_stopped(self.study, original)
            tell(self.study, trial, None, TrialState.FAIL)
            log.warning("%s; queued again as a waiting trial", outcome.reason)
            return
        if outcome.ending is Ending.REAPED:
            log.warning("trial %d was %s; its retry re-runs it; continuing", trial.number,
                        outcome.reason)
            if trial_id is not None:
                alive_after_reap(self.storage, self.study, trial_id)
            return
        state = _TOLD[outcome.ending]
        told = tell(self.study, trial, outcome.values if state == TrialState.COMPLETE else None,
                    state, outcome.reason)
        if outcome.ending is Ending.REJECTED:
            return
        if told.state != state:
            log.warning("trial %d was failed by a stale-trial check before it ended (heartbeat "
                        "late); its retry re-runs it; continuing", trial.number)
            if trial_id is not None:
                alive_after_reap(self.storage, self.study, trial_id)
        self._done = told


def told_state(ending: Ending) -> TrialState:
    """The state Optuna is told for an ending the trial itself reached."""
    return _TOLD[ending]
