"""What a worker shows while it runs: one live line on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

import optuna
from optuna.trial import TrialState

log = logging.getLogger("hpo.runtime.progress")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    def __init__(self, study: optuna.Study, n_trials: int, epochs: int, stream=None):
        self.study, self.n_trials, self.epochs = study, n_trials, epochs
        self.stream = stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.best: float | None = None
        self.started = time.monotonic()
        self.trial_seconds: list[float] = []
        self.finished = self._count_finished()
        self.trial_started = time.monotonic()  # reset when a trial ends: the next one starts

    def _count_finished(self) -> int:
        states = (TrialState.COMPLETE, TrialState.PRUNED)
        return len(self.study.get_trials(deepcopy=False, states=states))

    def _time_left(self, epoch: int) -> str:
        per_trial = (sum(self.trial_seconds) / len(self.trial_seconds) if self.trial_seconds
                     else (time.monotonic() - self.trial_started) / max(epoch, 1) * self.epochs)
        remaining = max(0, self.n_trials - self.finished - 1)
        this_trial = per_trial * max(0, self.epochs - epoch) / self.epochs
        return _duration(this_trial + remaining * per_trial)

    def line(self, trial_number: int, epoch: int, val_acc: float) -> str:
        best = "-" if self.best is None else f"{self.best:.4f}"
        return (f"trial {trial_number} ({min(self.finished + 1, self.n_trials)} of "
                f"{self.n_trials}) epoch {epoch}/{self.epochs} val_acc {val_acc:.4f} "
                f"best {best} ~{self._time_left(epoch)} left")

    def epoch(self, trial: optuna.Trial, metrics) -> None:
        text = self.line(trial.number, metrics.epoch, metrics.val_acc)
        if self.live:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
        else:
            log.info(text)

    def trial_done(self, trial: optuna.trial.FrozenTrial, finished: int | None = None,
                   study_best: float | None = None) -> None:
        """``finished``: trials complete or pruned so far, and ``study_best``: the best value of
        all workers' trials, when the caller has just read them."""
        self.trial_seconds.append(time.monotonic() - self.trial_started)
        self.trial_started = time.monotonic()
        self.finished = self._count_finished() if finished is None else finished
        if trial.state == TrialState.COMPLETE and trial.values:
            value = trial.values[0]
            self.best = value if self.best is None else max(self.best, value)
        if study_best is not None:
            self.best = study_best if self.best is None else max(self.best, study_best)
        reason = trial.user_attrs.get("end_reason", "")
        value = f" value {trial.values[0]:.4f}" if trial.values else ""
        text = f"trial {trial.number} {trial.state.name.lower()}{value}" + (
            f" ({reason})" if reason and trial.state != TrialState.COMPLETE else "")
        if self.live:
            self.stream.write("\r\033[K" + text + "\n")
            self.stream.flush()
        else:
            log.info(text)

    def close(self) -> None:
        if self.live:
            self.stream.write("\r\033[K")
            self.stream.flush()
