"""One trial, start to end: config from the trial, resume from its checkpoint, train with
per-epoch reports and pruning, record what happened. Every ending is a returned ``Outcome``,
never an exception: the worker loop tells Optuna the state it names."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any

import optuna
import torch

from hpo.store.artifacts import ArtifactPublisher
from hpo.training.checkpoints import CheckpointStore, save_model
from hpo.training.config import Config
from hpo.runtime.duplicates import already_trained
from hpo.runtime.epoch_reports import EpochReports
from hpo.training.data import DeviceData
from hpo.errors import HpoError
from hpo.runtime.outcome import Ending, Outcome
from hpo.runtime.side_threads import SideThreads
from hpo.runtime.trial_spec import TrialSpec, config_from_trial
from hpo.training.metrics import EpochMetrics, FitResult
from hpo.training.train import Interrupted, fit

log = logging.getLogger(__name__)


class _AlreadyTrained(Exception):
    def __init__(self, trial: optuna.trial.FrozenTrial):
        self.trial = trial


@dataclasses.dataclass
class _Attempt:
    """One trial being trained: what the runner's training callbacks share."""

    trial: optuna.Trial
    config: Config
    config_dict: dict[str, Any]
    inherited: dict[str, Any]  # user attributes of the trial this one retries; {} for a new one
    checkpoint_id: str
    duplicate: Future  # the duplicate check (already_trained), read once the model is built
    history: list[EpochMetrics]
    reports: EpochReports
    last_checkpoint: float = dataclasses.field(default_factory=time.monotonic)


class TrialRunner:
    # Set when another worker's stale-trial check failed the running trial (hpo.runtime.heartbeat):
    # training stops at the next batch and the trial ends as REAPED.
    lost: threading.Event | None = None

    def __init__(self, spec: TrialSpec, data: DeviceData, checkpoints: CheckpointStore,
                 publisher: ArtifactPublisher, stop: threading.Event,
                 on_epoch: Callable[[optuna.Trial, EpochMetrics], None] | None = None,
                 overlap_reports: bool | None = None):
        """``overlap_reports``: report epochs while the next one trains (hpo.runtime.epoch_reports);
        None: when the device is not the CPU."""
        self.spec, self.data, self.checkpoints, self.publisher = spec, data, checkpoints, publisher
        self.stop, self.on_epoch, self.overlap_reports = stop, on_epoch, overlap_reports
        self._side = SideThreads()  # bookkeeping off the training path

    def run(self, trial: optuna.Trial, queued: bool = True) -> Outcome:
        """``queued``: the trial was taken from the queue (a retry, a warm start), so it may
        carry user attributes; a trial the sampler just created has none to read."""
        try:
            return self._run(trial, queued)
        except optuna.exceptions.UpdateFinishedTrialError:
            return Outcome(Ending.REAPED, "failed by a stale-trial check (heartbeat late)")
        finally:  # whichever way the trial ended, none of its side work is left for the next
            self._side.wait(raising=False)

    def _run(self, trial: optuna.Trial, queued: bool) -> Outcome:
        try:
            config = config_from_trial(self.spec, trial, self.data.image_size)
        except HpoError as e:  # nothing was written on the side yet
            return self._rejected(trial, f"impossible configuration, not trained: {e}")
        config_dict = config.to_dict()
        # The duplicate check reads the study while the model is built; training waits for it.
        warm = queued and "warm_start" in trial.user_attrs
        duplicate = self._side.submit(partial(already_trained, trial, config_dict, queued, warm),
                                      aside=True)
        # A retry inherits its user attributes, and so the checkpoint of the trial it retries;
        # a new trial's id is stored with its first checkpoint's pointer.
        inherited = trial.user_attrs if queued else {}
        pointer = inherited.get("checkpoint")
        checkpoint_id = pointer["artifact_id"] if pointer else f"checkpoint-{uuid.uuid4().hex}"
        resume = self._resume(trial, pointer, config_dict)
        attempt = _Attempt(trial, config, config_dict, inherited, checkpoint_id, duplicate,
                           history=[EpochMetrics(**h) for h in (resume or {}).get("history", [])],
                           reports=self._epoch_reports(trial, config, inherited))
        return self._train(attempt, resume)

    def _epoch_reports(self, trial: optuna.Trial, config: Config,
                       inherited: dict[str, Any]) -> EpochReports:
        # The warm start (the configuration the stage inherited) always runs to the end.
        prunable = self.spec.prunable and "warm_start" not in inherited
        overlap = self.data.device.type != "cpu" if self.overlap_reports is None \
            else self.overlap_reports
        return EpochReports(trial, self._side.thread("hpo-reports") if overlap else None,
                            report=self.spec.prunable, prunable=prunable,
                            last_epoch=config.epochs,
                            last_report=partial(self._side.submit, aside=True))

    def _train(self, attempt: _Attempt, resume: dict | None) -> Outcome:
        """Train, and end the trial the way training ended. Every ending shares one clean-up:
        the side writes are waited for here, once, before its last step (``finish``)."""
        try:
            result = self._fit(attempt, resume)
        except _AlreadyTrained as e:
            finish = partial(self._rejected, attempt.trial,
                             f"the configuration of trial {e.trial.number} "
                             f"({e.trial.state.name.lower()}), not trained again")
        except optuna.TrialPruned as e:
            finish = self._record_pruned(attempt, str(e))
        except Interrupted:
            finish = partial(Outcome, Ending.STOPPED,
                             f"trial {attempt.trial.number} interrupted by a stop signal")
        except torch.OutOfMemoryError:
            # Handled once out of this block: until then the traceback holds the model.
            finish = partial(self._out_of_memory, attempt)
        else:
            finish = self._record_result(attempt, result)
        # Any other error propagates; run() still waits for the side writes, without raising.
        self._side.wait()
        return finish()

    def _fit(self, attempt: _Attempt, resume: dict | None) -> FitResult:
        try:
            result = fit(attempt.config, self.data, partial(self._epoch_done, attempt), resume,
                         self.spec.bf16, stop=self.stop,
                         between_batches=partial(self._between_batches, attempt),
                         on_model=partial(self._model_built, attempt))
            attempt.reports.settle()  # a prune decided during the last epoch still applies
            return result
        finally:  # however training ended, none of its background work is left in flight
            attempt.reports.settle(raising=False)
            self.checkpoints.wait()  # every pointer names a complete checkpoint from here

    def _model_built(self, attempt: _Attempt, params: int) -> None:
        """The model is built: unless the config was trained already, train it, and write its
        bookkeeping on the side meanwhile (not earlier: on the CPU those writes would compete
        with the suggestions and the model build for the interpreter)."""
        same = attempt.duplicate.result()
        if same is not None:
            raise _AlreadyTrained(same)
        trial, config_dict = attempt.trial, attempt.config_dict
        # CPU results depend on the thread count (reduction order): hpo train reuses it.
        where = {"device": str(self.data.device), "host": socket.gethostname(),
                 "pid": os.getpid(), "threads": torch.get_num_threads()}
        self._side.submit(lambda: [trial.set_user_attr(k, v) for k, v in where.items()])
        # A retry has its original's config, and its artifact.
        if attempt.inherited.get("config") != config_dict:
            self._side.submit(partial(trial.set_user_attr, "config", config_dict))
            self._side.submit(partial(self.publisher.config, trial, config_dict), aside=True)
        self._side.submit(partial(trial.set_user_attr, "params", params))

    def _epoch_done(self, attempt: _Attempt, m: EpochMetrics,
                    snapshot: Callable[[], dict[str, Any]]) -> None:
        attempt.history.append(m)
        attempt.reports.epoch_done(m)
        if self._checkpoint_due(attempt, m.epoch):
            attempt.last_checkpoint = time.monotonic()
            pointer = {"artifact_id": attempt.checkpoint_id, "epoch": m.epoch}
            self.checkpoints.save_in_background(
                attempt.checkpoint_id, {"config": attempt.config_dict, **snapshot()},
                then=partial(self._point_to, attempt.trial, pointer))
        if self.on_epoch is not None:
            self.on_epoch(attempt.trial, m)

    def _checkpoint_due(self, attempt: _Attempt, epoch: int) -> bool:
        """Bounded: every N epochs, at most every S seconds, never while one is still written
        (a big head on a GPU is GBs a checkpoint against epochs of a second)."""
        every = self.spec.checkpoint_every
        return bool(every and epoch % every == 0 and epoch < attempt.config.epochs
                    and time.monotonic() - attempt.last_checkpoint >= self.spec.checkpoint_seconds
                    and not self.checkpoints.busy())

    def _between_batches(self, attempt: _Attempt) -> None:
        if self.lost is not None and self.lost.is_set():
            raise optuna.exceptions.UpdateFinishedTrialError(
                f"trial {attempt.trial.number} was failed by a stale-trial check")
        attempt.reports.raise_if_pruned()

    def _record_pruned(self, attempt: _Attempt, reason: str) -> Callable[[], Outcome]:
        """Record the epochs up to the prune (not the abandoned one after it) and drop the
        checkpoint; returns the ending, for once the side writes have landed."""
        reports, history = attempt.reports, attempt.history
        pruned_at = reports.pruned_at.epoch if reports.pruned_at else len(history)
        self._record(attempt.trial, [m for m in history if m.epoch <= pruned_at],
                     end_reason=reason)
        self.checkpoints.remove(attempt.checkpoint_id)
        return partial(Outcome, Ending.PRUNED, reason)

    def _record_result(self, attempt: _Attempt, result: FitResult) -> Callable[[], Outcome]:
        """Record a trial that trained to its end (or diverged) and drop the checkpoint; returns
        the ending, for once the side writes have landed."""
        trial = attempt.trial
        diverged = result.status == "diverged"
        reason = f"diverged: {result.reason}" if diverged else result.reason or result.status
        # The value is the last epoch's: the weights published, and what hpo train re-creates.
        values = None if diverged else self.spec.objectives.values(
            result.final_val_acc, result.seconds, result.params)
        # The end-of-trial writes go three ways (two side threads and this one); all land
        # before the trial is told. A trial that ran all its epochs needs no end_reason.
        ended = {} if result.status == "completed" else {"end_reason": reason}
        self._record(trial, result.history, seconds=result.seconds, **ended,
                     then=None if diverged else partial(
                         self.publisher.model_if_best, trial, values[0],
                         partial(save_model, model=result.model, config=attempt.config_dict)))
        self.checkpoints.remove(attempt.checkpoint_id)
        if diverged:
            return partial(Outcome, Ending.PRUNED, reason)
        return partial(Outcome, Ending.COMPLETE, reason, values)

    def _out_of_memory(self, attempt: _Attempt) -> Outcome:
        """Fail the trial, once the exception (whose frames hold the model, its gradients and
        activations) is gone: only then can the cache give the memory back to the other jobs
        on the GPU."""
        if self.data.device.type == "cuda":
            gc.collect()  # frames and tracebacks in reference cycles
            torch.cuda.empty_cache()
        reason = f"out of memory on {self.data.device}"
        attempt.trial.set_user_attr("end_reason", reason)
        self.checkpoints.remove(attempt.checkpoint_id)
        return Outcome(Ending.FAILED, reason)

    @staticmethod
    def _rejected(trial: optuna.Trial, reason: str) -> Outcome:
        trial.set_user_attr("end_reason", reason)
        return Outcome(Ending.REJECTED, reason)

    def _record(self, trial: optuna.Trial, history: list[EpochMetrics],
                seconds: float | None = None, then: Callable[[], None] | None = None,
                **attrs: Any) -> None:
        """History and train-val gap on the side, the learning curve (and ``then``) aside, and
        here, meanwhile, training seconds (``seconds`` also counts a diverged epoch, which has
        no history row) and ``attrs``. The caller waits for the side before telling."""
        rows = [dataclasses.asdict(h) for h in history]
        along = {"history": rows}
        if history:
            along["gap"] = history[-1].train_acc - history[-1].val_acc
        self._side.submit(lambda: [trial.set_user_attr(k, v) for k, v in along.items()])
        self._side.submit(lambda: self.publisher.curve(trial, rows), aside=True)
        if then is not None:
            self._side.submit(then, aside=True)
        seconds = sum(h.seconds for h in history) if seconds is None else seconds
        if seconds:
            attrs["seconds"] = seconds
        for k, v in attrs.items():
            trial.set_user_attr(k, v)

    @staticmethod
    def _point_to(trial: optuna.Trial, pointer: dict[str, Any]) -> None:
        try:
            trial.set_user_attr("checkpoint", pointer)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # the trial was reaped meanwhile; its retry has the previous checkpoint

    def _resume(self, trial: optuna.Trial, pointer: dict | None, config: dict[str, Any]
                ) -> dict | None:
        if not pointer:  # no checkpoint inherited from a trial this one retries
            return None
        state = self.checkpoints.load(pointer["artifact_id"])  # always to the CPU
        if state is None:  # CheckpointStore said why; the trial starts from epoch 0
            return None
        if state.get("config") != config:
            log.warning("trial %d: checkpoint belongs to another config; starting from epoch 0",
                        trial.number)
            return None
        log.info("trial %d resumes from epoch %d of its checkpoint", trial.number, pointer["epoch"])
        trial.set_user_attr("resumed_from_epoch", pointer["epoch"])
        return state
