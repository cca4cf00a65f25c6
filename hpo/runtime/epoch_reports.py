"""Each epoch's accuracy reported to Optuna, and its pruner asked, while the next epoch trains.

``trial.report`` and ``trial.should_prune`` are storage calls (the pruner reads the study's
trials): about 6 ms an epoch on a local database, more across a network. When the model trains
on an accelerator the host's CPU is mostly idle, so they run, in order, on a thread of their own
while the next epoch trains: the decision for epoch k lands a few batches into epoch k+1, which
is then abandoned. A decision is always applied, at the latest when training ends, so whether a
trial is pruned, and where, never depends on timing. Nothing is reported after a prune.
On the CPU the thread would compete with training for the same cores (on 2 cores a decision
took 40-100 ms to land, all of it wasted training), so there they run in place, between epochs,
except the last epoch's report: no decision rides on it, so it is written alongside the trial's
end-of-trial writes.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import optuna

from hpo.training.metrics import EpochMetrics


class EpochReports:
    def __init__(self, trial: optuna.Trial, executor: ThreadPoolExecutor | None, report: bool,
                 prunable: bool, last_epoch: int,
                 last_report: Callable[[Callable[[], None]], None] | None = None):
        """``executor``: one thread (reports keep their order), or None to report in place.
        ``report``: Optuna takes intermediate values (single objective). ``prunable``: the
        pruner is asked, except after ``last_epoch`` (pruning then would save nothing and lose
        a complete result). ``last_report``: without an executor, hands it the report of
        ``last_epoch`` to run later (its caller waits for it before telling the trial)."""
        self.trial, self.executor, self.last_report = trial, executor, last_report
        self.report, self.prunable, self.last_epoch = report, prunable, last_epoch
        self.pruned_at: EpochMetrics | None = None  # set on the reporting thread
        self._pending: list[Future] = []

    def epoch_done(self, m: EpochMetrics) -> None:
        if not self.report:
            return
        if self.executor is None:
            if m.epoch >= self.last_epoch and self.last_report is not None:
                self.last_report(lambda: self._report(m))  # nothing is decided on it
                return
            self._report(m)
            self.raise_if_pruned()
        else:
            self._pending.append(self.executor.submit(self._report, m))

    def _report(self, m: EpochMetrics) -> None:
        if self.pruned_at is not None:
            return
        self.trial.report(m.val_acc, m.epoch)  # a step a failed attempt reported is ignored
        if self.prunable and m.epoch < self.last_epoch and self.trial.should_prune():
            self.pruned_at = m

    def raise_if_pruned(self) -> None:
        """Between batches: end the run once the pruner has said so."""
        if self.pruned_at is not None:
            m = self.pruned_at
            raise optuna.TrialPruned(f"validation accuracy {m.val_acc:.4f} after epoch "
                                     f"{m.epoch} is below the pruner's threshold")

    def settle(self, raising: bool = True) -> None:
        """Wait for every report (a storage error surfaces here), then apply a prune."""
        pending, self._pending = self._pending, []
        for future in pending:
            if raising:
                future.result()
            else:
                future.exception()
        if raising:
            self.raise_if_pruned()
