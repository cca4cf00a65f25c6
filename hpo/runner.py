"""One trial, start to end: config from the trial, resume from its checkpoint, train with
per-epoch reports and pruning, record what happened. Every ending is a returned ``Outcome``,
never an exception: the worker loop tells Optuna the state it names."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

import optuna
import torch

from hpo.artifacts import ArtifactPublisher
from hpo.checkpoints import CheckpointStore
from hpo.config import Config, from_dict
from hpo.epoch_reports import EpochReports
from hpo.data import DeviceData
from hpo.errors import HpoError
from hpo.model import feature_map_sizes
from hpo.objectives import Objectives
from hpo.outcome import Ending, Outcome
from hpo.train import EpochMetrics, Interrupted, fit
from search_spaces import Stage

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrialSpec:
    """What every trial of the study shares."""

    stage: Stage
    frozen: dict[str, Any]
    epochs: int
    seed: int
    objectives: Objectives
    prunable: bool  # single objective and a pruner other than none
    bf16: bool = False
    checkpoint_every: int = 1


def config_from_trial(spec: TrialSpec, trial: optuna.Trial, image_size: int) -> Config:
    """The full config the trial trains; HpoError if it cannot be built on these images."""
    config = from_dict(spec.stage.suggest(trial, {**spec.frozen, "epochs": spec.epochs,
                                                   "seed": spec.seed}))
    feature_map_sizes(config, image_size)
    return config


def _already_trained(trial: optuna.Trial, config: dict[str, Any]
                     ) -> optuna.trial.FrozenTrial | None:
    """A trial of this study that trained, trains or will train exactly this config, or None.

    A sampler may propose a finished point again (its result is already in the study), and two
    workers asking at once may draw the same point: the later trial by number gives way to an
    earlier one that is running or queued (a retry, or a point queued at set-up).
    """
    S = optuna.trial.TrialState
    for other in trial.study.get_trials(deepcopy=False):
        if other.number == trial.number:
            continue
        if other.state in (S.COMPLETE, S.PRUNED) and other.user_attrs.get("config") == config:
            return other
        if other.state == S.RUNNING and other.number < trial.number \
                and other.params == trial.params:
            return other
        # A queued trial's parameters: a retry's are its params; enqueue_trial keeps them in
        # the "fixed_params" system attribute until the trial runs (no public accessor;
        # tests/test_optuna_contract.py fails if that changes).
        if other.state == S.WAITING and other.number < trial.number and trial.params == (
                other.params or other.system_attrs.get("fixed_params")):
            return other
    return None


class TrialRunner:
    def __init__(self, spec: TrialSpec, data: DeviceData, checkpoints: CheckpointStore,
                 publisher: ArtifactPublisher, stop: threading.Event,
                 on_epoch: Callable[[optuna.Trial, EpochMetrics], None] | None = None,
                 overlap_reports: bool | None = None):
        """``overlap_reports``: report epochs while the next one trains (hpo.epoch_reports);
        None: when the device is not the CPU."""
        self.spec, self.data, self.checkpoints, self.publisher = spec, data, checkpoints, publisher
        self.stop, self.on_epoch, self.overlap_reports = stop, on_epoch, overlap_reports
        self._side, self._pending = None, []  # one writer thread for bookkeeping off the path
        self._reporter = None  # one thread for each epoch's report and pruning check

    def run(self, trial: optuna.Trial, queued: bool = True) -> Outcome:
        """``queued``: the trial was taken from the queue (a retry, a warm start), so it may
        carry user attributes; a trial the sampler just created has none to read."""
        try:
            return self._run(trial, queued)
        except optuna.exceptions.UpdateFinishedTrialError:
            return Outcome(Ending.REAPED, "failed by a stale-trial check (heartbeat late)")

    def _run(self, trial: optuna.Trial, queued: bool) -> Outcome:
        # Bookkeeping the trial does not wait for, written on the side while it trains. CPU
        # results depend on the thread count (reduction order): hpo train reuses it.
        where = {"device": str(self.data.device), "host": socket.gethostname(),
                 "pid": os.getpid(), "threads": torch.get_num_threads()}
        self._on_the_side(lambda: [trial.set_user_attr(k, v) for k, v in where.items()])
        try:
            config = config_from_trial(self.spec, trial, self.data.image_size)
        except HpoError as e:
            self._side_written()
            return self._rejected(trial, f"impossible configuration, not trained: {e}")
        config_dict = config.to_dict()
        same = _already_trained(trial, config_dict)
        if same is not None:
            self._side_written()
            return self._rejected(trial, f"the configuration of trial {same.number} "
                                         f"({same.state.name.lower()}), not trained again")
        # A retry inherits its user attributes, and so the checkpoint of the trial it retries;
        # a new trial's id is stored with its first checkpoint's pointer.
        inherited = trial.user_attrs if queued else {}
        if inherited.get("config") != config_dict:  # a retry has its original's, and its artifact
            self._on_the_side(lambda: trial.set_user_attr("config", config_dict))
            self._on_the_side(lambda: self.publisher.config(trial, config_dict))
        pointer = inherited.get("checkpoint")
        checkpoint_id = pointer["artifact_id"] if pointer else f"checkpoint-{uuid.uuid4().hex}"
        resume = self._resume(trial, pointer, config_dict)
        history = [EpochMetrics(**h) for h in (resume or {}).get("history", [])]

        # The warm start (the configuration the stage inherited) always runs to the end.
        prunable = self.spec.prunable and "warm_start" not in inherited

        overlap = self.data.device.type != "cpu" if self.overlap_reports is None \
            else self.overlap_reports
        reports = EpochReports(trial, self._executor("_reporter", "hpo-reports") if overlap
                               else None,
                               report=self.spec.prunable, prunable=prunable,
                               last_epoch=config.epochs)

        def on_epoch(m: EpochMetrics, snapshot: Callable[[], dict[str, Any]]) -> None:
            history.append(m)
            reports.epoch_done(m)
            every = self.spec.checkpoint_every
            if every and m.epoch % every == 0 and m.epoch < config.epochs:
                pointer = {"artifact_id": checkpoint_id, "epoch": m.epoch}
                self.checkpoints.save_in_background(
                    checkpoint_id, {"config": config_dict, **snapshot()},
                    then=lambda: self._point_to(trial, pointer))
            if self.on_epoch is not None:
                self.on_epoch(trial, m)

        try:
            try:
                result = fit(config, self.data, on_epoch, resume, self.spec.bf16, stop=self.stop,
                             between_batches=reports.raise_if_pruned,
                             on_model=lambda n: self._on_the_side(
                                 lambda: trial.set_user_attr("params", n)))
                reports.settle()  # a prune decided during the last epoch still applies
            finally:
                self.checkpoints.wait()  # every pointer names a complete checkpoint from here
        except optuna.TrialPruned as e:
            reports.settle(raising=False)
            pruned_at = reports.pruned_at.epoch if reports.pruned_at else len(history)
            kept = [m for m in history if m.epoch <= pruned_at]  # not the abandoned epoch
            self._record(trial, kept, end_reason=str(e))
            self.checkpoints.remove(checkpoint_id)
            self._side_written()
            return Outcome(Ending.PRUNED, str(e))
        except Interrupted:
            reports.settle(raising=False)
            self._side_written()
            return Outcome(Ending.STOPPED, f"trial {trial.number} interrupted by a stop signal")
        except torch.OutOfMemoryError:
            if self.data.device.type == "cuda":
                torch.cuda.empty_cache()
            reason = f"out of memory on {self.data.device}"
            reports.settle(raising=False)
            self._side_written()
            trial.set_user_attr("end_reason", reason)
            self.checkpoints.remove(checkpoint_id)
            return Outcome(Ending.FAILED, reason)
        except BaseException:
            reports.settle(raising=False)
            self._side_written(raising=False)  # none lands after the trial is failed
            raise
        diverged = result.status == "diverged"
        reason = f"diverged: {result.reason}" if diverged else result.reason or result.status
        # The end-of-trial writes go on the side, alongside what happens here; all land
        # before the trial is told.
        self._record(trial, result.history, seconds=result.seconds, end_reason=reason)
        self.checkpoints.remove(checkpoint_id)
        if diverged:
            self._side_written()
            return Outcome(Ending.PRUNED, reason)
        # The value is the last epoch's: the weights published here, and what hpo train re-creates.
        values = self.spec.objectives.values(result.final_val_acc, result.seconds, result.params)
        self.publisher.model_if_best(trial, values[0], result.model, config_dict)
        self._side_written()
        return Outcome(Ending.COMPLETE, reason, values)

    def _executor(self, name: str, thread_name: str):
        """One thread per kind, kept across trials. With the trial's own thread, the heartbeat
        and the reaper, a worker uses at most five database connections (hpo.storage's pool)."""
        from concurrent.futures import ThreadPoolExecutor

        if getattr(self, name) is None:
            setattr(self, name, ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name))
        return getattr(self, name)

    def _on_the_side(self, write: Callable[[], object]) -> None:
        self._pending.append(self._executor("_side", "hpo-attrs").submit(write))

    def _side_written(self, raising: bool = True) -> None:
        """Wait for the side writes (before the trial is told, or queued again)."""
        pending, self._pending = self._pending, []
        for future in pending:
            if raising:
                future.result()  # a storage error surfaces here, on the trial's own path
            else:
                future.exception()

    @staticmethod
    def _rejected(trial: optuna.Trial, reason: str) -> Outcome:
        trial.set_user_attr("end_reason", reason)
        return Outcome(Ending.REJECTED, reason)

    def _record(self, trial: optuna.Trial, history: list[EpochMetrics],
                seconds: float | None = None, **attrs: Any) -> None:
        """On the side: history, train-val gap, training seconds (``seconds`` also counts a
        diverged epoch, which has no history row) and ``attrs``, then the learning curve."""
        rows = [dataclasses.asdict(h) for h in history]
        attrs["history"] = rows
        if history:
            attrs["gap"] = history[-1].train_acc - history[-1].val_acc
        seconds = sum(h.seconds for h in history) if seconds is None else seconds
        if seconds:
            attrs["seconds"] = seconds
        self._on_the_side(lambda: [trial.set_user_attr(k, v) for k, v in attrs.items()])
        self._on_the_side(lambda: self.publisher.curve(trial, rows))

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
