"""A stage's search space given its frozen base, explored without training: every point of a
finite space, whether each point can be built on the dataset's images, and the parameters that
make a stage reproduce a given configuration (the warm start). No torch here.

A stage's ``suggest`` is plain code asking a trial for values; a probe trial answers it with
fixed values and raises at the first parameter it has no value for, so the space is walked
depth-first, conditional parameters included.
"""

from __future__ import annotations

import itertools
import math
import types
from typing import Any

from hpo.training.geometry import is_possible
from search_spaces import Stage


class Infinite(Exception):
    """The space has a continuous parameter."""


class _Unset(Exception):
    def __init__(self, name: str, options: list[Any]):
        self.name, self.options = name, options


class Outside(Exception):
    """A fixed value outside its parameter's range."""


class _Probe:
    """Stands in for an Optuna trial: answers from ``fixed``, stops at the first parameter it
    has no value for, and refuses a fixed value outside its parameter's range."""

    def __init__(self, fixed: dict[str, Any], grid: dict[str, list] | None = None):
        self.fixed, self.asked = fixed, []
        if grid is not None:  # as GridSampler runs it (stage5 offers the grid all its L1 values)
            from optuna.samplers import GridSampler

            self.study = types.SimpleNamespace(sampler=GridSampler(grid))

    def _answer(self, name: str, options: list[Any] | None, low=None, high=None) -> Any:
        self.asked.append(name)
        if name not in self.fixed:
            if options is None:
                raise Infinite(name)
            raise _Unset(name, options)
        value = self.fixed[name]
        inside = value in options if options is not None else low <= value <= high
        if not inside:
            raise Outside(f"{name}={value!r}")
        return value

    def suggest_categorical(self, name, choices):
        return self._answer(name, list(choices))

    def suggest_int(self, name, low, high, step=1, log=False):
        if log:  # Optuna's log-scale ints are every integer in the range
            step = 1
        return self._answer(name, list(range(low, high + 1, step)))

    def suggest_float(self, name, low, high, step=None, log=False):
        if step is None:
            return self._answer(name, None, low, high)
        count = int(math.floor((high - low) / step + 1e-9)) + 1
        return self._answer(name, [low + i * step for i in range(count)])


def points(stage: Stage, frozen: dict[str, Any], limit: int) -> list[dict[str, Any]] | None:
    """Every parameter set of the stage's space in a fixed order, or None if the space is
    continuous or has more than ``limit`` points."""
    found: list[dict[str, Any]] = []

    def walk(fixed: dict[str, Any]) -> None:
        probe = _Probe(fixed)
        try:
            stage.suggest(probe, dict(frozen))
        except _Unset as unset:
            for option in unset.options:
                walk({**fixed, unset.name: option})
                if len(found) > limit:
                    return
            return
        found.append({name: fixed[name] for name in probe.asked})

    try:
        walk({})
    except Infinite:
        return None
    return None if len(found) > limit else found


def config_of(stage: Stage, frozen: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The config a trial with these parameters trains (before epochs and seed are set)."""
    return stage.suggest(_Probe(params), dict(frozen))


def possible_points(stage: Stage, frozen: dict[str, Any], limit: int, image_size: int
                    ) -> list[dict[str, Any]] | None:
    """The finite space's points whose network can be built on images of this size."""
    every = points(stage, frozen, limit=max(limit, 1) * 8)
    if every is None:
        return None
    possible = [p for p in every if is_possible(config_of(stage, frozen, p), image_size)]
    return possible if len(possible) <= limit else None


def inherited_params(stage: Stage, frozen: dict[str, Any]) -> dict[str, Any] | None:
    """The parameters under which the stage trains exactly ``frozen`` (its warm start), or None
    where the stage cannot express it (a value outside its space)."""
    if stage.params_of is None:
        return None
    params = stage.params_of(frozen)
    if params is None:
        return None
    probe = _Probe(params)
    try:
        same = stage.suggest(probe, dict(frozen)) == frozen
    except (_Unset, Infinite, Outside):
        return None
    return {name: params[name] for name in probe.asked} if same else None


def grid_configs(stage: Stage, frozen: dict[str, Any], image_size: int) -> list[dict[str, Any]]:
    """The distinct configs of the stage's grid that can be built on images of this size: the
    trials a grid search trains (a point that repeats another's config or cannot be built is
    refused untrained, so it does not count)."""
    space = stage.grid(frozen)
    seen: dict[str, dict[str, Any]] = {}
    for values in itertools.product(*space.values()):
        config = stage.suggest(_Probe(dict(zip(space, values)), grid=space), dict(frozen))
        if is_possible(config, image_size):
            seen.setdefault(repr(sorted(config.items())), config)
    return list(seen.values())


def grid_size(stage: Stage, frozen: dict[str, Any], image_size: int = 32) -> int:
    """How many trials the stage's grid trains: its distinct configs that can be built."""
    return len(grid_configs(stage, frozen, image_size))
