"""What a trial leaves for people to look at, through Optuna's artifact store: its learning
curve and config (every trial), and the trained weights of the study's best trial so far."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.artifacts import upload_artifact

log = logging.getLogger(__name__)


class ArtifactPublisher:
    def __init__(self, artifact_store, best_value: Callable[[], float | None] | None = None):
        """``best_value``: the study's best first objective among complete trials, by a query
        cheaper than reading the trials (hpo.studies.counts); by default the trials are read."""
        self.store = artifact_store
        self.best_value = best_value

    def config(self, trial: optuna.Trial, config: dict) -> None:
        """The config as a JSON file (stored when the trial starts)."""
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"config-trial{trial.number}.json"
                path.write_text(json.dumps(config, indent=2))
                upload_artifact(artifact_store=self.store, file_path=str(path),
                                study_or_trial=trial, mimetype="application/json")
        except Exception as e:  # artifacts are a view; never lose the trial over them
            log.warning("trial %d: could not store its config artifact (%s)", trial.number, e)

    def curve(self, trial: optuna.Trial, history: list[dict]) -> None:
        """The learning curve as a PNG (stored when the trial ends)."""
        from hpo.views.curve_png import learning_curve_png

        try:
            with tempfile.TemporaryDirectory() as tmp:
                curve = learning_curve_png(history, Path(tmp) / f"learning-curve-trial{trial.number}.png",
                                            title=f"trial {trial.number}")
                upload_artifact(artifact_store=self.store, file_path=str(curve),
                                study_or_trial=trial, mimetype="image/png")
        except Exception as e:  # artifacts are a view; never lose the trial over them
            log.warning("trial %d: could not store its learning curve (%s)", trial.number, e)

    def model_if_best(self, trial: optuna.Trial, value: float,
                      write_model: Callable[[Path], None]) -> None:
        """The best trial so far (by its first objective) also gets its trained weights, which
        ``write_model(path)`` writes (hpo.training.checkpoints.save_model: the store knows no
        torch)."""
        if self.best_value is not None:
            best = self.best_value()
        else:
            done = trial.study.get_trials(deepcopy=False,
                                          states=(optuna.trial.TrialState.COMPLETE,))
            best = max((t.values[0] for t in done if t.values), default=None)
        if best is not None and value <= best:
            return
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"model-trial{trial.number}.pt"
                write_model(path)
                upload_artifact(artifact_store=self.store, file_path=str(path),
                                study_or_trial=trial, mimetype="application/octet-stream")
        except Exception as e:
            log.warning("trial %d: could not store the model (%s)", trial.number, e)
