"""A study's trials by state and its best value in two small queries, for the worker loop's
check before every trial. ``study.get_trials()`` gives the same through Optuna's trial cache, but
re-reads every running trial with its parameters and attributes each time (about six statements
and a FrozenTrial per running trial); on many workers with short trials that is most of the
loop's own cost (benchmarks/orchestration.py part a, benchmarks/scale.py)."""

from __future__ import annotations

import sqlalchemy
from optuna.trial import TrialState

from hpo.budget import Tally
from hpo.storage import RetryingStorage


def count_trials(storage: RetryingStorage, study_id: int) -> Tally:
    return storage.call(_count, storage, study_id)


def _count(storage: RetryingStorage, study_id: int) -> Tally:
    # Optuna has no public count query; its ORM models are its schema
    # (tests/test_optuna_contract.py fails if they change).
    from optuna.storages._rdb import models  # private: no public count query

    trial, value = models.TrialModel, models.TrialValueModel
    with sqlalchemy.orm.Session(storage.engine) as session:
        by_state = (session.query(trial.state, sqlalchemy.func.count())
                    .filter(trial.study_id == study_id).group_by(trial.state).all())
        best = (session.query(sqlalchemy.func.max(value.value))
                .join(trial, trial.trial_id == value.trial_id)
                .filter(trial.study_id == study_id, trial.state == TrialState.COMPLETE,
                        value.objective == 0,
                        value.value_type == models.TrialValueModel.TrialValueType.FINITE)
                .scalar())
    counts = dict.fromkeys(TrialState, 0)
    counts.update({state: n for state, n in by_state})
    return Tally(counts, best)
