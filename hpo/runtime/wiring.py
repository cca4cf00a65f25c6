"""One worker on one study, wired: the start-up reap, the budget, the heartbeat and reaper
threads, progress lines and the ask-run-tell loop around a runner. ``hpo-worker`` runs its
trials through this, and ``benchmarks/scale.py`` its stand-in runner, so the benchmark measures
the worker that ships. No torch here."""

from __future__ import annotations

import threading
from typing import Any, Callable

import optuna

from hpo.runtime.heartbeat import Heartbeat
from hpo.runtime.loop import WorkerLoop
from hpo.runtime.progress import Progress
from hpo.runtime.reaper import Reaper, ReaperThread
# A module, not its names: looked up at each call, so benchmarks/orchestration.py can time it.
from hpo.studies import budget as budgets

REAPER_JOIN = 60.0  # a check under way finishes: a trial it failed is queued again before exit


class WiredWorker:
    """Create it once the study is loaded with its sampler and pruner: it picks up what dead
    workers left behind at once; ``run`` then trains until the budget, the deadline or ``stop``."""

    def __init__(self, storage, study: optuna.Study, stop: threading.Event, epochs: int,
                 wait_interval: float, deadline: float | None = None):
        self.storage, self.study, self.stop, self.epochs = storage, study, stop, epochs
        self.wait_interval, self.deadline = wait_interval, deadline
        self.reaper = Reaper(storage)
        self.reaper.reap(study, force=True)

    def budget(self) -> int:
        return budgets.stored_budget(self.storage, self.study.study_name)  # --update may raise it

    def finished(self) -> bool:
        """The budget is used and nothing runs anywhere: nothing for this worker to do."""
        counts = budgets.tally(self.study)
        return (counts.left(self.budget()) <= 0
                and counts.counts[optuna.trial.TrialState.RUNNING] == 0)

    def run(self, make_runner: Callable[[Callable], Any],
            fallback_sampler: optuna.samplers.BaseSampler | None = None) -> int:
        """``make_runner(on_epoch)`` builds the runner (it reports epochs to the progress
        lines); returns how many trials this worker ran."""
        progress = Progress(self.study, self.budget(), self.epochs)
        runner = make_runner(progress.epoch)
        heartbeat = Heartbeat(self.storage)
        runner.lost = heartbeat.lost  # a trial failed under a live worker stops at once
        loop = WorkerLoop(self.study, self.storage, runner, self.budget, self.reaper, heartbeat,
                          self.stop, wait_interval=self.wait_interval, deadline=self.deadline,
                          on_trial_done=lambda t, counts: progress.trial_done(
                              t, counts.finished, counts.best),
                          fallback_sampler=fallback_sampler)
        reaper_thread = ReaperThread(self.reaper, lambda: (self.study,))
        heartbeat.start()
        reaper_thread.start()
        try:
            return loop.run()
        finally:
            reaper_thread.halt.set()
            reaper_thread.join(timeout=REAPER_JOIN)
            heartbeat.stop()
            progress.close()
