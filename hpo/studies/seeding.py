"""Samplers seeded per trial, so that workers started with one command draw different points.

A sampler seeded once per process draws one sequence in every process given the same seed.
Workers started alike (on several machines, as a SLURM array, by hand) then propose the same
points at the same moments, and all but one of each are refused as already trained (11 to 18
refusals per run of 16 workers sharing a budget of 32 trials), and a crashed trial's retry was
refused as a duplicate of a twin that trained beside it. Seeding each trial's draws from (study
seed, trial number) keeps a one-worker run reproducible and sets concurrent workers apart: no
two trials share a number.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState


def trial_seed(seed: int, number: int) -> int:
    """A well-mixed seed for one trial of a study seeded ``seed``."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class TrialSeeded(optuna.samplers.BaseSampler):
    """``build(seed)``'s sampler, built afresh for each trial with that trial's seed.

    What the wrapped samplers learn they read from the study (CMA-ES its optimizer state too),
    so a fresh one proposes what the old one would, given its seed. GP alone loses something:
    the kernel fit it would start from, so each fit starts from scratch (slower, not wrong).
    Not thread-safe: a worker asks one trial at a time.
    """

    def __init__(self, build: Callable[[int | None], optuna.samplers.BaseSampler],
                 seed: int | None):
        self._build, self._seed = build, seed
        self.inner = build(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._seed is not None:
            self.inner = self._build(trial_seed(self._seed, trial.number))
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: list[float] | None) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
