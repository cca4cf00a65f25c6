"""The sampler and pruner a worker builds from a study's stored settings."""

from __future__ import annotations

import functools
from typing import Any

import optuna

from hpo.studies.seeding import TrialSeeded
from hpo.studies.settings import Settings
from search_spaces import Stage


class GridUntilBudget(optuna.samplers.GridSampler):
    """Optuna's grid sampler minus its stop at the grid's end: study.stop works only inside
    study.optimize, and the worker loop stops on the budget, which is the grid's size."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_sampler(settings: Settings, stage: Stage, frozen: dict[str, Any], seed: int | None):
    """``settings.sampler`` for one worker; a seeded one is seeded per trial (hpo.studies.seeding)."""
    name = settings.sampler
    if name == "grid" and not settings.exhaustive:
        # Not seeded per trial: Optuna's grid sampler shuffles the grid by its seed and
        # workers name points by their index in it, so every worker needs the same order.
        return GridUntilBudget(stage.grid(frozen), seed=settings.seed or 0)
    # A partial, not a lambda: a sampler pickles (benchmarks/scale.py hands it to its processes).
    return TrialSeeded(functools.partial(_sampler, name, settings.exhaustive), seed)


def _sampler(name: str, exhaustive: bool, seed: int | None) -> optuna.samplers.BaseSampler:
    if exhaustive:
        # Every point is queued at set-up; the sampler is only asked if the budget is raised.
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        # constant_liar: running trials count as bad, so concurrent workers spread out.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


def make_pruner(settings: Settings) -> optuna.pruners.BasePruner:
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=settings.epochs)
    return optuna.pruners.NopPruner()
