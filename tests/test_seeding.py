"""Seeded samplers draw per trial: workers started alike propose different points, and a run of
one worker is reproducible (hpo.studies.seeding)."""

from __future__ import annotations

import optuna
import pytest

from hpo.studies.samplers import make_sampler
from hpo.studies.settings import Settings
from search_spaces import DEFAULTS, get_stage

SAMPLERS = ["tpe", "random", "gp", "cmaes"]


def _workers(storage: str, sampler: str, n: int, seed: int | None = 0) -> list[optuna.Study]:
    """``n`` workers of one study, each with the sampler a worker process builds."""
    stage = get_stage("stage1_layers")
    settings = Settings(stage=stage.name, sampler=sampler, seed=seed)
    return [optuna.load_study(study_name="s", storage=storage,
                              sampler=make_sampler(settings, stage, dict(DEFAULTS), seed))
            for _ in range(n)]


def _asks(workers: list[optuna.Study], rounds: int, tell: bool) -> list[dict]:
    """Each round, every worker asks a trial (all running at once, as in a study with several
    workers), then, if ``tell``, all are told."""
    stage, drawn = get_stage("stage1_layers"), []
    for _ in range(rounds):
        trials = [w.ask() for w in workers]
        for trial in trials:
            stage.suggest(trial, dict(DEFAULTS))
            drawn.append(trial.params)
        for w, trial in zip(workers, trials):
            if tell:
                w.tell(trial, trial.params["lr"])
    return drawn


@pytest.mark.parametrize("history", [0, 12])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_workers_started_alike_propose_different_points(tmp_path, sampler, history):
    # Defect: every process seeded its sampler with the study's seed, so workers started with
    # one command (several machines, a SLURM array) drew one sequence: each proposed the point
    # the others proposed, and all but one were refused as already trained. With a history of
    # 12 finished trials the model-based samplers are past their random start-up.
    storage = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="s", storage=storage, direction="maximize")
    workers = _workers(storage, sampler, 3)
    _asks(workers[:1], rounds=history, tell=True)
    drawn = _asks(workers, rounds=2, tell=False)
    assert len({repr(sorted(p.items())) for p in drawn}) == len(drawn), drawn


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_one_seeded_worker_is_reproducible(tmp_path, sampler):
    runs = []
    for run in ("a", "b"):
        storage = f"sqlite:///{tmp_path / f'{run}.db'}"
        optuna.create_study(study_name="s", storage=storage, direction="maximize")
        runs.append(_asks(_workers(storage, sampler, 1), rounds=12, tell=True))
    assert runs[0] == runs[1]


def test_an_unseeded_sampler_is_not_rebuilt_per_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="s", storage=storage, direction="maximize")
    worker = _workers(storage, "tpe", 1, seed=None)[0]
    inner = worker.sampler.inner
    _asks([worker], rounds=2, tell=True)
    assert worker.sampler.inner is inner


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_workers_sampler_pickles_and_draws_the_same_after(sampler, tmp_path):
    # benchmarks/scale.py hands each process its sampler through pickle; a lambda inside the
    # per-trial factory made that fail ("Can't pickle local object").
    import pickle

    stage = get_stage("stage1_layers")
    settings = Settings(stage=stage.name, sampler=sampler, seed=3)
    original = make_sampler(settings, stage, dict(DEFAULTS), 3)
    copy = pickle.loads(pickle.dumps(original))
    drawn = []
    for i, s in enumerate((original, copy)):
        study = optuna.create_study(study_name=f"p{i}", sampler=s,
                                    storage=f"sqlite:///{tmp_path / f'{i}.db'}")
        drawn.append(stage.suggest(study.ask(), dict(DEFAULTS)))
    assert drawn[0] == drawn[1]
