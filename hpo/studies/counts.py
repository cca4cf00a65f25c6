"""A study's trials by state and its best value in one small query, for the worker loop's
check before every trial. ``study.get_trials()`` gives the same through Optuna's trial cache, but
re-reads every running trial with its parameters and attributes each time (about six statements
and a FrozenTrial per running trial); on many workers with short trials that is most of the
loop's own cost (benchmarks/orchestration.py part a, benchmarks/scale.py)."""

from __future__ import annotations

import functools

import sqlalchemy
from optuna.trial import TrialState

from hpo.studies.budget import Tally
from hpo.store.retrying_storage import RetryingStorage


def count_trials(storage: RetryingStorage, study_id: int) -> Tally:
    return storage.call(_count, storage, study_id)


def _count(storage: RetryingStorage, study_id: int) -> Tally:
    with storage.engine.connect() as conn:
        rows = conn.execute(_statement(), {"study_id": study_id}).all()
    counts = dict.fromkeys(TrialState, 0)
    counts.update({state: n for state, n, _ in rows})
    best = next((top for state, _, top in rows if state == TrialState.COMPLETE), None)
    return Tally(counts, best)


@functools.cache
def _statement() -> sqlalchemy.Select:
    """Trials by state, with each state's best finite first value: one statement, built once."""
    # Optuna has no public count query; its ORM models are its schema
    # (tests/test_optuna_contract.py fails if they change).
    from optuna.storages._rdb import models  # private: no public count query

    trial, value = models.TrialModel, models.TrialValueModel
    finite_first = sqlalchemy.and_(
        value.trial_id == trial.trial_id, value.objective == 0,
        value.value_type == models.TrialValueModel.TrialValueType.FINITE)
    return (sqlalchemy.select(trial.state, sqlalchemy.func.count(trial.trial_id),
                              sqlalchemy.func.max(value.value))
            .select_from(trial).outerjoin(value, finite_first)
            .where(trial.study_id == sqlalchemy.bindparam("study_id"))
            .group_by(trial.state))
