"""The search-space walk (hpo/studies/space.py) and the untried-point sampler (hpo/studies/untried.py)."""

from __future__ import annotations

import optuna
import pytest

from hpo.training.geometry import is_possible
from hpo.studies.space import grid_configs, inherited_params, points, possible_points
from hpo.studies.untried import UntriedPoints
from search_spaces import DEFAULTS, all_stages, get_stage

BASES = {
    "defaults": dict(DEFAULTS),
    "one_conv": {**DEFAULTS, "conv_layers": 1, "filters": [64], "fc_widths": []},
    "no_conv": {**DEFAULTS, "conv_layers": 0, "filters": [], "fc_widths": [512, 256]},
    "reports": {**DEFAULTS, "filters": [64, 128, 512], "kernel_size": 4, "weight_decay": 1e-3,
                "fc_dropout": 0.3, "conv_batchnorm": True, "fc_batchnorm": True,
                "optimizer": "adam", "lr": 0.001, "batch_size": 64},
}
BUILT_IN = [name for name in all_stages() if name.startswith("stage")]


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_stage_can_start_from_the_config_it_inherits(name, base):
    stage, frozen = get_stage(name), BASES[base]
    params = inherited_params(stage, frozen)
    if params is None:
        # stage1 derives the widths from the layer count: it starts chains, from the defaults
        assert name == "stage1_layers" and base in ("one_conv", "reports")
        return
    study = optuna.create_study()
    study.enqueue_trial(params)
    assert stage.suggest(study.ask(), dict(frozen)) == frozen


def test_inherited_params_is_none_outside_the_space():
    stage1 = get_stage("stage1_layers")
    assert inherited_params(stage1, {**DEFAULTS, "lr": 0.5}) is None  # above its lr range
    assert inherited_params(stage1, {**DEFAULTS, "batch_size": 48}) is None  # not a power of 2


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("name", BUILT_IN)
def test_a_finite_space_walk_gives_distinct_configs(name, base):
    stage, frozen = get_stage(name), BASES[base]
    found = points(stage, frozen, limit=5000)
    if found is None:  # a continuous parameter (a learning rate)
        assert name in ("stage1_layers", "stage7_optimizer")
        return
    configs = [repr(sorted(stage.suggest(optuna.trial.FixedTrial(p), dict(frozen)).items()))
               for p in found]
    assert len(set(configs)) == len(configs), "two points of the space train the same network"


def test_stage4_possible_points_leave_out_exactly_the_impossible_geometries():
    stage4 = get_stage("stage4_conv")
    frozen = {**DEFAULTS, "conv_layers": 4, "filters": [32, 64, 128, 256]}
    every, possible = points(stage4, frozen, 1000), possible_points(stage4, frozen, 1000, 32)
    config = lambda p: stage4.suggest(optuna.trial.FixedTrial(p), dict(frozen))  # noqa: E731
    assert possible == [p for p in every if is_possible(config(p))]
    assert 0 < len(possible) < len(every)
    # every valid point of the reports' grid stays reachable
    grid = [c for c in grid_configs(stage4, frozen, 32)]
    reachable = {repr(sorted(config(p).items())) for p in possible}
    assert grid and all(repr(sorted(c.items())) in reachable for c in grid)


def test_l1_strengths_offered_shrink_as_the_network_grows():
    stage5 = get_stage("stage5_regularization")
    small = {**DEFAULTS, "conv_layers": 1, "filters": [16], "fc_widths": []}
    large = {**DEFAULTS, "filters": [128, 256, 1024], "fc_widths": [4096]}
    offered = lambda frozen: {p["l1"] for p in points(stage5, frozen, 10_000)}  # noqa: E731
    assert offered(large) < offered(small)
    assert 0.0 in offered(large) and 1e-1 not in offered(small)
    # the reports' grid keeps every value it tried
    assert {c["l1"] for c in grid_configs(stage5, large, 32)} == {1e-6, 1e-5, 1e-4, 1e-3, 1e-2,
                                                                  1e-1}


def test_untried_points_proposes_each_point_once_then_repeats():
    stage6 = get_stage("stage6_batchnorm")
    space = points(stage6, DEFAULTS, 10)
    study = optuna.create_study(sampler=UntriedPoints(space, seed=1))
    seen = []
    for _ in range(len(space)):
        trial = study.ask()
        stage6.suggest(trial, dict(DEFAULTS))
        seen.append(trial.params)
        study.tell(trial, 0.5)
    assert sorted(map(repr, seen)) == sorted(map(repr, space))
