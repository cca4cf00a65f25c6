"""trial -> config -> fit, reporting validation accuracy every epoch and pruning on it.

A configuration that cannot be built, diverges or runs out of memory ends as a pruned or failed
trial with its reason in ``user_attrs["end_reason"]``; it never stops the worker.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import json
import tempfile
import threading
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import upload_artifact

from hpo.config import Config, from_dict
from hpo.data import DeviceData
from hpo.errors import HpoError
from hpo.model import feature_map_sizes
from hpo.plots import plot_learning_curve
from hpo.train import EpochMetrics, Interrupted, fit
from search_spaces import Stage

log = logging.getLogger(__name__)


class TrialFailed(Exception):
    """The trial could not run (e.g. out of memory); recorded as FAIL, the worker goes on."""


class OverBudget(TrialFailed):
    """Created in a race after the budget was filled: recorded as FAIL, no training done."""


class WorkerStopping(Exception):
    """SIGTERM/SIGINT arrived mid-trial: the trial fails here and is queued again elsewhere."""


class Objective:
    def __init__(self, stage: Stage, frozen: dict[str, Any], epochs: int, seed: int,
                 data: DeviceData, artifact_store, objectives: str = "accuracy",
                 stop: threading.Event | None = None, bf16: bool = False,
                 checkpoint_every: int = 1, on_epoch=None, n_trials: int | None = None):
        self.stage, self.frozen, self.epochs, self.seed = stage, frozen, epochs, seed
        self.data, self.store, self.objectives = data, artifact_store, objectives
        self.stop, self.bf16, self.checkpoint_every = stop, bf16, checkpoint_every
        self.on_epoch = on_epoch  # progress display: (trial, metrics) -> None
        self.current_trial_id: int | None = None
        self.n_trials = n_trials  # the study-wide budget, or None for no check
        self.over_budget: set[int] = set()  # trial numbers that gave way to the budget

    def _started_before(self, trial: optuna.Trial) -> int:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                  optuna.trial.TrialState.RUNNING)
        return sum(t.number < trial.number
                   for t in trial.study.get_trials(deepcopy=False, states=states))

    def give_way_if_over_budget(self, trial: optuna.Trial) -> None:
        """Workers that checked the budget at the same moment both created a trial; the later
        one by number gives way (raises OverBudget), so the study-wide budget holds exactly."""
        # Only trial numbers past the budget can be over it: most trials skip the extra read.
        if (self.n_trials is not None and trial.number >= self.n_trials
                and self._started_before(trial) >= self.n_trials):
            self.over_budget.add(trial.number)
            trial.set_user_attr("end_reason", f"over budget: {self.n_trials} trials already started")
            raise OverBudget(f"trial {trial.number} is over the study's budget of {self.n_trials}")

    def __call__(self, trial: optuna.Trial):
        self.current_trial_id = trial._trial_id
        self.give_way_if_over_budget(trial)
        trial.set_user_attr("device", str(self.data.device))
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        # CPU results depend on the thread count (reduction order): hpo train reuses it
        trial.set_user_attr("threads", torch.get_num_threads())
        base = {**self.frozen, "epochs": self.epochs, "seed": self.seed}
        try:
            config = from_dict(self.stage.suggest(trial, base))
            feature_map_sizes(config, self.data.image_size)
        except HpoError as e:
            return self._prune(trial, f"impossible configuration: {e}")
        trial.set_user_attr("config", config.to_dict())
        resume = self._load_checkpoint(trial, config)
        multi = self.objectives != "accuracy"

        def on_epoch(m: EpochMetrics, checkpoint) -> None:
            if not multi:  # a step the failed attempt already reported is ignored by Optuna
                trial.report(m.val_acc, m.epoch)
            history.append(m)
            trial.set_user_attr("history", [vars(h) for h in history])
            if self.checkpoint_every and m.epoch % self.checkpoint_every == 0 and m.epoch < config.epochs:
                self._save_checkpoint(trial, m.epoch, config, checkpoint())
            if self.on_epoch is not None:
                self.on_epoch(trial, m)
            if not multi and trial.should_prune():
                raise optuna.TrialPruned(
                    f"validation accuracy {m.val_acc:.4f} after epoch {m.epoch} is below the "
                    f"pruner's threshold")

        history: list[EpochMetrics] = [EpochMetrics(**h) for h in (resume or {}).get("history", [])]
        try:
            result = fit(config, self.data, on_epoch, resume, self.bf16, stop=self.stop)
        except optuna.TrialPruned as e:
            self._finish(trial, history, config)
            return self._prune(trial, str(e))
        except Interrupted:
            raise WorkerStopping(f"trial {trial.number} interrupted by a stop signal") from None
        except torch.OutOfMemoryError:
            if self.data.device.type == "cuda":
                torch.cuda.empty_cache()
            trial.set_user_attr("end_reason", f"out of memory on {self.data.device}")
            raise TrialFailed(f"trial {trial.number}: out of memory on {self.data.device}") from None
        self._finish(trial, result.history, config, seconds=result.seconds)
        trial.set_user_attr("params", result.params)
        if result.status == "diverged":
            return self._prune(trial, f"diverged: {result.reason}")
        trial.set_user_attr("end_reason", result.reason or result.status)
        self._remove_checkpoint(trial)
        accuracy = result.best_val_acc
        self._publish_if_best(trial, accuracy, result.model, config)
        if self.objectives == "accuracy,time":
            return accuracy, sum(h.seconds for h in result.history)  # = user_attrs["seconds"]
        if self.objectives == "accuracy,params":
            return accuracy, float(result.params)
        return accuracy

    # -- bookkeeping -------------------------------------------------------------------------

    def _prune(self, trial: optuna.Trial, reason: str):
        trial.set_user_attr("end_reason", reason)
        self._remove_checkpoint(trial)
        if self.objectives != "accuracy":  # multi-objective studies cannot prune: record a failure
            raise TrialFailed(reason)
        raise optuna.TrialPruned(reason)

    def _finish(self, trial: optuna.Trial, history: list[EpochMetrics], config: Config,
                seconds: float | None = None) -> None:
        """Record the gap and training seconds (``seconds`` when given: it also counts a diverged
        epoch, which has no history row) and attach the learning curve and config as artifacts."""
        if history:
            last = history[-1]
            trial.set_user_attr("gap", last.train_acc - last.val_acc)
        seconds = sum(h.seconds for h in history) if seconds is None else seconds
        if seconds:
            trial.set_user_attr("seconds", seconds)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                curve = plot_learning_curve([vars(h) for h in history],
                                            Path(tmp) / f"learning-curve-trial{trial.number}.png",
                                            title=f"trial {trial.number}")
                upload_artifact(artifact_store=self.store, file_path=str(curve),
                                study_or_trial=trial, mimetype="image/png")
                cfg = Path(tmp) / f"config-trial{trial.number}.json"
                cfg.write_text(json.dumps(config.to_dict(), indent=2))
                upload_artifact(artifact_store=self.store, file_path=str(cfg),
                                study_or_trial=trial, mimetype="application/json")
        except Exception as e:  # artifacts are a view; never lose the trial over them
            log.warning("trial %d: could not store artifacts (%s)", trial.number, e)

    def _publish_if_best(self, trial: optuna.Trial, accuracy: float, model, config: Config) -> None:
        """The best trial so far also gets its trained weights as an artifact."""
        best = [t.values[0] for t in trial.study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if t.values]
        if best and accuracy <= max(best):
            return
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"model-trial{trial.number}.pt"
                torch.save({"config": config.to_dict(), "model": model.state_dict()}, path)
                upload_artifact(artifact_store=self.store, file_path=str(path),
                                study_or_trial=trial, mimetype="application/octet-stream")
        except Exception as e:
            log.warning("trial %d: could not store the model (%s)", trial.number, e)

    def _checkpoint_id(self, trial: optuna.Trial) -> str:
        # A retried trial carries the number of the trial it retries, and so its checkpoint.
        root = trial.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        return f"checkpoint-study{trial.study._study_id}-trial{root if root is not None else trial.number}"

    def _save_checkpoint(self, trial, epoch: int, config: Config, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save({"config": config.to_dict(), **state}, buffer)
        buffer.seek(0)
        artifact_id = self._checkpoint_id(trial)
        self.store.write(artifact_id, buffer)
        trial.set_user_attr("checkpoint", {"artifact_id": artifact_id, "epoch": epoch})

    def _load_checkpoint(self, trial, config: Config) -> dict[str, Any] | None:
        pointer = trial.user_attrs.get("checkpoint")  # inherited from the trial this one retries
        if not pointer:
            return None
        try:
            with self.store.open_reader(pointer["artifact_id"]) as reader:
                state = torch.load(io.BytesIO(reader.read()), map_location=self.data.device,
                                   weights_only=False)
        except Exception as e:
            log.warning("trial %d: checkpoint %s unreadable (%s); starting from epoch 0",
                        trial.number, pointer.get("artifact_id"), e)
            return None
        if state.get("config") != config.to_dict():
            log.warning("trial %d: checkpoint belongs to another config; starting from epoch 0",
                        trial.number)
            return None
        log.info("trial %d resumes from epoch %d of its checkpoint", trial.number, pointer["epoch"])
        trial.set_user_attr("resumed_from_epoch", pointer["epoch"])
        return state

    def _remove_checkpoint(self, trial) -> None:
        pointer = trial.user_attrs.get("checkpoint")
        if pointer:
            try:
                self.store.remove(pointer["artifact_id"])
            except Exception:
                pass
