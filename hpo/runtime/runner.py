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
from typing import Any

import optuna
import torch

from hpo.store.artifacts import ArtifactPublisher
from hpo.training.checkpoints import CheckpointStore
from hpo.training.config import Config, from_dict
from hpo.runtime.epoch_reports import EpochReports
from hpo.training.data import DeviceData
from hpo.errors import HpoError
from hpo.training.model import feature_map_sizes
from hpo.studies.objectives import Objectives
from hpo.runtime.outcome import Ending, Outcome
from hpo.training.metrics import EpochMetrics
from hpo.training.train import Interrupted, fit
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
    checkpoint_every: int = 1  # epochs
    checkpoint_seconds: float = 0.0  # and at least this long since the trial's last one


def config_from_trial(spec: TrialSpec, trial: optuna.Trial, image_size: int) -> Config:
    """The full config the trial trains; HpoError if it cannot be built on these images."""
    config = from_dict(spec.stage.suggest(trial, {**spec.frozen, "epochs": spec.epochs,
                                                   "seed": spec.seed}))
    feature_map_sizes(config, image_size)
    return config


def _already_trained(trial: optuna.Trial, config: dict[str, Any], queued: bool,
                     warm: bool = False) -> optuna.trial.FrozenTrial | None:
    """A trial of this study that trained, trains or will train exactly this config, or None.

    A sampler may propose a finished point again (its result is already in the study), and two
    workers asking at once may draw the same point. A trial the sampler just proposed gives way
    to any twin that is running or queued: whichever of two such twins checks second sees the
    other's parameters, so at most one trains (both may give way; the point stays untried). A
    queued trial (a retry, a warm start) gives way only to an earlier queued or running twin.
    The warm start (``warm``) never gives way to a pruned twin: the stage needs its value.
    """
    S = optuna.trial.TrialState
    trials = trial.study.get_trials(deepcopy=False)
    # A retry never gives way to the trials it retries: a stopped worker queues the retry
    # before it fails the original (hpo.runtime.loop), so the original may still be running.
    me = next((t for t in trials if t.number == trial.number), None)
    retried = set(me.system_attrs.get("retry_history", [])) if me else set()
    for other in trials:
        if other.number == trial.number or other.number in retried:
            continue
        if other.state in ((S.COMPLETE,) if warm else (S.COMPLETE, S.PRUNED)) \
                and other.user_attrs.get("config") == config:
            return other
        if queued and other.number > trial.number:
            continue
        if other.state == S.RUNNING and other.params == trial.params:
            return other
        # A queued trial's parameters: a retry's are its params; enqueue_trial keeps them in
        # the "fixed_params" system attribute until the trial runs (no public accessor;
        # tests/test_optuna_contract.py fails if that changes).
        if other.state == S.WAITING and trial.params == (
                other.params or other.system_attrs.get("fixed_params")):
            return other
    return None


class _AlreadyTrained(Exception):
    def __init__(self, trial: optuna.trial.FrozenTrial):
        self.trial = trial


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
        self._side, self._aside, self._pending = None, None, []  # bookkeeping off the path
        self._reporter = None  # one thread for each epoch's report and pruning check

    def run(self, trial: optuna.Trial, queued: bool = True) -> Outcome:
        """``queued``: the trial was taken from the queue (a retry, a warm start), so it may
        carry user attributes; a trial the sampler just created has none to read."""
        try:
            return self._run(trial, queued)
        except optuna.exceptions.UpdateFinishedTrialError:
            return Outcome(Ending.REAPED, "failed by a stale-trial check (heartbeat late)")
        finally:  # whichever way the trial ended, none of its side work is left for the next
            self._side_written(raising=False)

    def _run(self, trial: optuna.Trial, queued: bool) -> Outcome:
        try:
            config = config_from_trial(self.spec, trial, self.data.image_size)
        except HpoError as e:  # nothing was written on the side yet
            return self._rejected(trial, f"impossible configuration, not trained: {e}")
        config_dict = config.to_dict()
        # The duplicate check reads the study while the model is built; training waits for it.
        warm = queued and "warm_start" in trial.user_attrs
        duplicate = self._on_the_side(lambda: _already_trained(trial, config_dict, queued, warm),
                                      aside=True)
        # A retry inherits its user attributes, and so the checkpoint of the trial it retries;
        # a new trial's id is stored with its first checkpoint's pointer.
        inherited = trial.user_attrs if queued else {}
        pointer = inherited.get("checkpoint")
        checkpoint_id = pointer["artifact_id"] if pointer else f"checkpoint-{uuid.uuid4().hex}"

        def on_model(params: int) -> None:
            """The model is built: unless the config was trained already, train it, and write
            its bookkeeping on the side meanwhile (not earlier: on the CPU those writes would
            compete with the suggestions and the model build for the interpreter)."""
            same = duplicate.result()
            if same is not None:
                raise _AlreadyTrained(same)
            # CPU results depend on the thread count (reduction order): hpo train reuses it.
            where = {"device": str(self.data.device), "host": socket.gethostname(),
                     "pid": os.getpid(), "threads": torch.get_num_threads()}
            self._on_the_side(lambda: [trial.set_user_attr(k, v) for k, v in where.items()])
            if inherited.get("config") != config_dict:  # a retry has its original's, and artifact
                self._on_the_side(lambda: trial.set_user_attr("config", config_dict))
                self._on_the_side(lambda: self.publisher.config(trial, config_dict), aside=True)
            self._on_the_side(lambda: trial.set_user_attr("params", params))

        resume = self._resume(trial, pointer, config_dict)
        history = [EpochMetrics(**h) for h in (resume or {}).get("history", [])]

        # The warm start (the configuration the stage inherited) always runs to the end.
        prunable = self.spec.prunable and "warm_start" not in inherited

        overlap = self.data.device.type != "cpu" if self.overlap_reports is None \
            else self.overlap_reports
        reports = EpochReports(trial, self._executor("_reporter", "hpo-reports") if overlap
                               else None,
                               report=self.spec.prunable, prunable=prunable,
                               last_epoch=config.epochs,
                               last_report=lambda report: self._on_the_side(report, aside=True))

        last_checkpoint = [time.monotonic()]

        def on_epoch(m: EpochMetrics, snapshot: Callable[[], dict[str, Any]]) -> None:
            history.append(m)
            reports.epoch_done(m)
            every = self.spec.checkpoint_every
            # Bounded: every N epochs, at most every S seconds, never while one is still written
            # (a big head on a GPU is GBs a checkpoint against epochs of a second).
            if (every and m.epoch % every == 0 and m.epoch < config.epochs
                    and time.monotonic() - last_checkpoint[0] >= self.spec.checkpoint_seconds
                    and not self.checkpoints.busy()):
                last_checkpoint[0] = time.monotonic()
                pointer = {"artifact_id": checkpoint_id, "epoch": m.epoch}
                self.checkpoints.save_in_background(
                    checkpoint_id, {"config": config_dict, **snapshot()},
                    then=lambda: self._point_to(trial, pointer))
            if self.on_epoch is not None:
                self.on_epoch(trial, m)

        def between_batches() -> None:
            if self.lost is not None and self.lost.is_set():
                raise optuna.exceptions.UpdateFinishedTrialError(
                    f"trial {trial.number} was failed by a stale-trial check")
            reports.raise_if_pruned()

        out_of_memory = False
        try:
            try:
                result = fit(config, self.data, on_epoch, resume, self.spec.bf16, stop=self.stop,
                             between_batches=between_batches, on_model=on_model)
                reports.settle()  # a prune decided during the last epoch still applies
            finally:
                self.checkpoints.wait()  # every pointer names a complete checkpoint from here
        except _AlreadyTrained as e:
            self._side_written()
            return self._rejected(trial, f"the configuration of trial {e.trial.number} "
                                         f"({e.trial.state.name.lower()}), not trained again")
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
            out_of_memory = True  # handled below: here the traceback still holds the model
        except BaseException:
            reports.settle(raising=False)
            self._side_written(raising=False)  # none lands after the trial is failed
            raise
        if out_of_memory:
            return self._out_of_memory(trial, reports, checkpoint_id)
        diverged = result.status == "diverged"
        reason = f"diverged: {result.reason}" if diverged else result.reason or result.status
        # The value is the last epoch's: the weights published, and what hpo train re-creates.
        values = None if diverged else self.spec.objectives.values(
            result.final_val_acc, result.seconds, result.params)
        # The end-of-trial writes go three ways (two side threads and this one); all land
        # before the trial is told. A trial that ran all its epochs needs no end_reason.
        ended = {} if result.status == "completed" else {"end_reason": reason}
        self._record(trial, result.history, seconds=result.seconds, **ended,
                     then=None if diverged else lambda: self.publisher.model_if_best(
                         trial, values[0], result.model, config_dict))
        self.checkpoints.remove(checkpoint_id)
        self._side_written()
        if diverged:
            return Outcome(Ending.PRUNED, reason)
        return Outcome(Ending.COMPLETE, reason, values)

    def _out_of_memory(self, trial: optuna.Trial, reports: EpochReports,
                       checkpoint_id: str) -> Outcome:
        """Fail the trial, once the exception (whose frames hold the model, its gradients and
        activations) is gone: only then can the cache give the memory back to the other jobs
        on the GPU."""
        if self.data.device.type == "cuda":
            gc.collect()  # frames and tracebacks in reference cycles
            torch.cuda.empty_cache()
        reason = f"out of memory on {self.data.device}"
        reports.settle(raising=False)
        self._side_written()
        trial.set_user_attr("end_reason", reason)
        self.checkpoints.remove(checkpoint_id)
        return Outcome(Ending.FAILED, reason)

    def _executor(self, name: str, thread_name: str):
        """One thread per kind, kept across trials: the attribute writer, the aside thread and,
        on an accelerator, the reporting thread. With the trial's own thread, the heartbeat, the
        reaper and the checkpoint writer they rarely all need a database connection at once;
        hpo.store.storage's pool has five, and a sixth caller waits for one."""
        from concurrent.futures import ThreadPoolExecutor

        if getattr(self, name) is None:
            setattr(self, name, ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name))
        return getattr(self, name)

    def _on_the_side(self, work: Callable[[], object], aside: bool = False) -> Future:
        """Attribute writes go in order on one thread; ``aside``: on a second one (reads and
        artifacts, which need not wait behind the attribute writes)."""
        lane = self._executor("_aside", "hpo-aside") if aside else \
            self._executor("_side", "hpo-attrs")
        future = lane.submit(work)
        self._pending.append(future)
        return future

    def _side_written(self, raising: bool = True) -> None:
        """Wait for every side write (before the trial is told, or queued again); then, with
        ``raising``, the first one's error surfaces here, on the trial's own path."""
        pending, self._pending = self._pending, []
        errors = [e for e in (future.exception() for future in pending) if e is not None]
        if raising and errors:
            raise errors[0]

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
        self._on_the_side(lambda: [trial.set_user_attr(k, v) for k, v in along.items()])
        self._on_the_side(lambda: self.publisher.curve(trial, rows), aside=True)
        if then is not None:
            self._on_the_side(then, aside=True)
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
