"""What every trial of a study shares (``TrialSpec``) and the config one trial trains from it."""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna

from hpo.studies.objectives import Objectives
from hpo.training.config import Config, from_dict
from hpo.training.model import feature_map_sizes
from search_spaces import Stage


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
