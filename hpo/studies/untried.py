"""A sampler that proposes a point of a finite space that no trial of the study has taken yet.

TPE ignores FAIL trials, so after it proposes a point the study already trained (refused
untrained, hpo.runtime.runner) it tends to propose the same point again; the worker loop asks this one
instead for the next trial. It decides the whole point before the trial's first suggestion
(``before_trial``) and hands it out one parameter at a time, so conditional parameters follow
the point the stage's own ``suggest`` generated.
"""

from __future__ import annotations

import random
from typing import Any

import optuna
from optuna.trial import TrialState


def _key(params: dict[str, Any]) -> str:
    return repr(sorted(params.items()))


class UntriedPoints(optuna.samplers.BaseSampler):
    def __init__(self, points: list[dict[str, Any]], seed: int | None = None):
        self.points = points
        self._rng = random.Random(seed)
        self._fallback = optuna.samplers.RandomSampler(seed=seed)
        self._point: dict[str, Any] = {}

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        taken = set()
        for other in study.get_trials(deepcopy=False):
            if other.state == TrialState.FAIL:
                continue  # refused or crashed: not trained, or re-queued as a waiting trial
            # A queued trial's parameters wait in "fixed_params" (see hpo.runtime.duplicates).
            taken.add(_key(other.params or other.system_attrs.get("fixed_params") or {}))
        untried = [p for p in self.points if _key(p) not in taken]
        self._point = self._rng.choice(untried or self.points)

    def sample_independent(self, study, trial, param_name, param_distribution):
        if param_name in self._point:
            return self._point[param_name]
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)
