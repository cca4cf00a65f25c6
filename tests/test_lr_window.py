"""The chain's learning-rate window (``--lr-window``): a stage that changes the network also
searches lr around the inherited one; its warm start keeps the inherited value; a stage that
searches lr itself, or does not change the network, is left as it is."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from hpo.studies import chain as chains
from hpo.errors import HpoError
from hpo.studies.lr_window import PARAM, with_lr_window
from hpo.studies.space import config_of, inherited_params
from hpo.store.storage import open_storage
from hpo.studies.study import StudyRequest, open_study
from search_spaces import DEFAULTS, get_stage

FROZEN = {**DEFAULTS, "lr": 0.03, "conv_batchnorm": True}


@pytest.mark.parametrize("name", ["stage2_fc", "stage3_filters", "stage4_conv",
                                  "stage5_regularization", "stage6_batchnorm"])
def test_a_network_stage_searches_lr_within_the_window_and_its_warm_start_keeps_the_inherited(
        name):
    stage = get_stage(name)
    windowed = with_lr_window(stage, FROZEN, 4)
    assert windowed is not stage and windowed.name == stage.name
    warm = inherited_params(windowed, FROZEN)
    assert warm is not None and warm[PARAM] == 0.03
    assert config_of(windowed, FROZEN, warm) == FROZEN  # the warm start trains what it inherited
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    rates = {windowed.suggest(study.ask(), dict(FROZEN))["lr"] for _ in range(30)}
    assert len(rates) > 1 and all(0.03 / 4 <= r <= 0.03 * 4 for r in rates)


def test_the_warm_start_a_new_chain_stage_queues_keeps_the_inherited_lr(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'hpo.db'}")
    stage = with_lr_window(get_stage("stage3_filters"), FROZEN, 4)
    study, _, _, frozen = open_study(storage, StudyRequest("c.stage3_filters", stage, {"n_trials": 3}, base=(dict(FROZEN), {"study": "c.stage2_fc", "trial": 0})))
    queued = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert frozen == FROZEN and len(queued) == 1
    assert queued[0].system_attrs["fixed_params"][PARAM] == 0.03


@pytest.mark.parametrize("name", ["stage1_layers", "stage7_optimizer", "stage8_schedule"])
def test_a_stage_that_searches_lr_itself_or_keeps_the_network_is_unchanged(name):
    stage = get_stage(name)
    assert with_lr_window(stage, FROZEN, 4) is stage


def test_a_network_stage_that_asks_for_lr_itself_is_unchanged():
    # stage1's suggest (it asks "lr") under a network stage's name: searched already, kept.
    own = dataclasses.replace(get_stage("stage1_layers"), name="stage3_filters")
    assert with_lr_window(own, FROZEN, 4) is own


def test_the_window_is_off_unless_set():
    stage = get_stage("stage3_filters")
    assert with_lr_window(stage, FROZEN, None) is stage
    assert "lr_window" not in chains.chain_settings({}, [stage])
    assert chains.chain_settings({"lr_window": 4.0}, [stage])["lr_window"] == 4.0


def test_a_chain_made_without_the_window_refuses_a_worker_with_it(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'hpo.db'}")
    stages = chains.parse_chain("stage2_fc..stage3_filters")
    chains.open_chain(storage, "c", stages, {})
    with pytest.raises(HpoError, match=r"--lr-window 'off'; got 4.0"):
        chains.open_chain(storage, "c", stages, {"lr_window": 4.0})
    assert "lr_window" not in chains.open_chain(storage, "c", stages, {})


def test_a_chain_with_the_window_searches_lr_around_what_each_stage_inherited(tmp_path):
    from optuna.trial import TrialState

    from hpo.store import study_records
    from hpo.studies.chain import BASE
    from tests.conftest import run_cli
    from tests.workers import trials

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    r = run_cli("hpo-worker", "--chain", "stage2_fc..stage3_filters", "--lr-window", "4",
                "--n-trials", "3", "--dataset", "cifar10-sample", "--train-size", "300",
                "--epochs", "1", "--seed", "0", "--devices", "cpu", "--storage", url,
                "--artifacts", str(tmp_path / "art"), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    storage = optuna.storages.RDBStorage(url)
    assert study_records.read(storage, "chain")["chain"]["lr_window"] == 4.0
    inherited = BASE["lr"]
    for name in ("chain.stage2_fc", "chain.stage3_filters"):
        done = [t for t in trials(url, name) if t.state == TrialState.COMPLETE]
        warm = next(t for t in done if "warm_start" in t.user_attrs)
        assert warm.params[PARAM] == inherited == warm.user_attrs["config"]["lr"]
        assert all(inherited / 4 <= t.user_attrs["config"]["lr"] <= inherited * 4 for t in done)
        best = max(done, key=lambda t: (t.value, -t.number))
        inherited = best.user_attrs["config"]["lr"]  # what the next stage's window centres on
